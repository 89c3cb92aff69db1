"""The batch runner every suite and diagnostic uses: which samples each stage attacks, how the
per-sample worst case and the counts combine, and the threat-model guard -- on hand-made
batches whose answers are known."""
from __future__ import annotations

import pytest
import torch

from rrm_fast.eval import Stage, attack_batch
from rrm_fast.eval.runner import aggregate

EPS = 0.2


def logits_model(x):
    """The 'image' is its own logits: argmax is the class with the largest pixel."""
    return x.flatten(1)


def batch():
    """6 samples, 4 classes. Class scores 0.5 (label) / 0.4 (runner-up) / 0.3; the 4th column
    holds the sample's id / 100 (never the argmax) so an attack can tell samples apart.
    Sample 5 is misclassified (its label scores 0.4)."""
    rows, labels = [], [0, 1, 2, 0, 1, 2]
    for i, y in enumerate(labels):
        r = [0.3, 0.3, 0.3, i / 100]
        r[y] = 0.5 if i != 5 else 0.4
        r[(y + 1) % 3] = 0.4 if i != 5 else 0.5
        rows.append(r)
    return torch.tensor(rows), torch.tensor(labels)


class FlipSamples:
    """Fools exactly the samples whose id is in ``ids`` (raises their runner-up by eps) and
    records which ids it was asked to attack."""

    def __init__(self, ids, size=EPS):
        self.ids, self.size, self.seen = set(ids), size, []

    def __call__(self, x, y):
        ids = [round(float(v) * 100) for v in x[:, 3]]
        self.seen.append(ids)
        out = x.clone()
        for row, (i, label) in enumerate(zip(ids, y.tolist())):
            if i in self.ids:
                out[row, (label + 1) % 3] += self.size
        return out


def test_robust_scope_attacks_only_the_survivors_of_earlier_stages():
    x, y = batch()
    a, b = FlipSamples({0, 1}), FlipSamples({1, 2, 5})
    rec = attack_batch(logits_model, [Stage("A", a), Stage("B", b)], x, y, eps=EPS, norm="Linf")
    assert a.seen == [[0, 1, 2, 3, 4]] and b.seen == [[2, 3, 4]]  # never the misclassified sample 5
    assert (rec["n"], rec["clean"], rec["robust"]) == (6, 5, 2)
    assert rec["run_on"] == {"A": 5, "B": 3} and rec["fooled"] == {"A": 2, "B": 1}
    assert rec["alone"] == {} and rec["mask"] == "000110"
    assert rec["max_size"]["A"] == pytest.approx(EPS) and rec["seconds"]["A"] >= 0


def test_correct_scope_records_each_attacks_accuracy_alone_and_their_worst_case():
    x, y = batch()
    a, b = FlipSamples({0, 1}), FlipSamples({1, 2, 5})
    rec = attack_batch(logits_model, [Stage("A", a, "correct"), Stage("B", b, "correct")], x, y, eps=EPS, norm="Linf")
    assert a.seen == b.seen == [[0, 1, 2, 3, 4]]
    # alone: A leaves {2, 3, 4}, B leaves {0, 3, 4}; worst case {3, 4}; B's new kill is sample 2 only
    assert rec["alone"] == {"A": 3, "B": 3} and rec["fooled"] == {"A": 2, "B": 1}
    assert rec["robust"] == 2 and rec["mask"] == "000110"


def test_batch_scope_attacks_every_sample_and_eps_zero_attacks_none():
    x, y = batch()
    a = FlipSamples({5, 3})
    rec = attack_batch(logits_model, [Stage("A", a, "batch")], x, y, eps=EPS, norm="Linf")
    assert a.seen == [[0, 1, 2, 3, 4, 5]] and rec["fooled"] == {"A": 1} and rec["mask"] == "111010"
    idle = FlipSamples({0})
    rec0 = attack_batch(logits_model, [Stage("A", idle)], x, y, eps=0.0, norm="Linf")
    assert idle.seen == [] and rec0["robust"] == rec0["clean"] == 5


def test_an_attack_leaving_the_ball_is_a_bug_never_a_number():
    x, y = batch()
    with pytest.raises(RuntimeError, match="left the threat model"):
        attack_batch(logits_model, [Stage("too far", FlipSamples({0}, size=1.5 * EPS))], x, y, eps=EPS, norm="Linf")
    with pytest.raises(ValueError, match="unknown stage scope"):
        Stage("A", FlipSamples({0}), "everyone")


def test_aggregate_sums_batches_and_keeps_the_largest_perturbation():
    x, y = batch()
    recs = [attack_batch(logits_model, [Stage("A", FlipSamples(ids, size))], x, y, eps=EPS, norm="Linf")
            for ids, size in (({0}, 0.15), ({1, 2}, 0.2))]
    tot = aggregate(recs, ["A"])
    assert (tot["n"], tot["clean"], tot["robust"]) == (12, 10, 7)
    assert tot["fooled"] == {"A": 3} and tot["run_on"] == {"A": 10}
    assert tot["max_size"]["A"] == pytest.approx(0.2)
    assert tot["mask"].tolist() == [False, True, True, True, True, False, True, False, False, True, True, False]
