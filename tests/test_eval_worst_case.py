"""The honest robust accuracy: named attack sets, the per-sample worst case over a CE and a
margin attack, and the CE-vs-margin warning -- on a small PGD-AT CNN and on the same CNN with
its logits divided by a temperature (exactly as robust, but soft: CE-only attacks are fooled).

Measured (first 1000 test images, eps 0.1, the default apgd-ce+t at 20 iterations): T = 1:
APGD-CE 64.4%, APGD-T 63.7%, worst case 63.6% (silent); T = 20: APGD-CE 69.7%, APGD-T 63.7%,
worst case 63.7% (fires, 6.0 points); the standard suite (Square-1000) gives 63.0% on the T = 1
model. The gradient-masking checks' PGD-10 CE vs DLR on the first 500: 66.6% / 67.2% (silent)
and 71.6% / 67.2% (fires)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rrm_fast.attacks import cw_loss, margin_loss
from rrm_fast.data import load_dataset
from rrm_fast.eval import (ATTACK_SETS, DEFAULT_ATTACKS, build_stages, ce_vs_margin, evaluate_robustness,
                           evaluate_standard, evaluate_worst_case, gradient_masking_checks)
from helpers import Tempered, adversarially_trained_cnn, fmnist, one_thread

EPS = 0.1
TEMPERATURE = 20.0


@pytest.fixture(scope="module")
def threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def robust_cnn(threads):
    return adversarially_trained_cnn(EPS)


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion_mnist", "test").subset(torch.arange(1000))


# ---- formulas ---------------------------------------------------------------------------
def test_cw_loss_is_the_best_other_logit_minus_the_true_one():
    z = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.5, 0.5, -1.0]])
    y = torch.tensor([0, 1, 1])
    # max_{i != y} z_i - z_y: 2 - 3, 3 - 1, 0.5 - 0.5 (a tie is a misclassification's edge)
    assert cw_loss(z, y).tolist() == [-1.0, 2.0, 0.0]
    assert torch.equal(cw_loss(z, y), -margin_loss(z, y))
    # scale-free in sign: dividing the logits by a temperature keeps which samples it calls fooled
    assert torch.equal(cw_loss(z / 20, y) > 0, cw_loss(z, y) > 0)


@pytest.mark.parametrize("ce, margin, n, fires", [
    (60, 58, 100, True),     # exactly 2 points: fires
    (60, 59, 100, False),    # 1 point: silent
    (300, 295, 300, False),  # 1.67 points: silent
    (300, 294, 300, True),   # 2 points on 300
    (50, 60, 100, False),    # the margin attack weaker than CE: silent
])
def test_ce_vs_margin_threshold_is_two_points_on_the_same_samples(ce, margin, n, fires):
    check = ce_vs_margin("PGD-20-CE", ce, "PGD-20-DLR", margin, n)
    assert check["ok"] is (not fires) and check["name"] == "ce_vs_margin"
    assert check["values"]["gap_points"] == pytest.approx(100 * (ce - margin) / n)
    assert ("points more than CE" in check["message"]) is fires
    assert f"on the same {n} samples" in check["message"]


# ---- the attack sets ----------------------------------------------------------------------
def test_attack_sets_name_their_stages_and_scopes():
    m = nn.Linear(4, 10)
    kw = dict(eps=EPS, norm="Linf", steps=7)
    assert DEFAULT_ATTACKS in ATTACK_SETS
    got = {name: [(s.name, s.scope, s.loss) for s in build_stages(name, m, 10, n_targets=3, n_queries=50, **kw)]
           for name in ATTACK_SETS}
    assert got["pgd-ce"] == [("PGD-7", "batch", "ce")]
    assert got["pgd-ce+dlr"] == [("PGD-7-CE", "correct", "ce"), ("PGD-7-DLR", "correct", "margin")]
    assert got["pgd-ce+cw"] == [("PGD-7-CE", "correct", "ce"), ("PGD-7-CW", "correct", "margin")]
    assert got["apgd-ce+dlr"] == [("APGD-CE-7", "correct", "ce"), ("APGD-DLR-7", "correct", "margin")]
    assert got["apgd-ce+t"] == [("APGD-CE-7", "correct", "ce"), ("APGD-T-7x3", "correct", "margin")]
    assert got["standard"] == [("APGD-CE-7", "robust", "ce"), ("APGD-T-7x3", "robust", "margin"),
                               ("Square-50", "robust", "score")]
    # the sets' own target counts: 3 for the default pair, 9 for standard
    assert [s.name for s in build_stages("apgd-ce+t", m, 10, **kw)] == ["APGD-CE-7", "APGD-T-7x3"]
    assert [s.name for s in build_stages("standard", m, 10, **kw)][1] == "APGD-T-7x9"
    # DLR needs a third logit, targeted DLR a fourth
    assert [s.name for s in build_stages("pgd-ce+dlr", m, 2, **kw)] == ["PGD-7-CE", "PGD-7-CW"]
    assert [s.name for s in build_stages("apgd-ce+t", m, 2, **kw)] == ["APGD-CE-7", "PGD-7-CW"]
    assert [s.name for s in build_stages("apgd-ce+t", m, 3, **kw)] == ["APGD-CE-7", "APGD-DLR-7"]
    assert [s.name for s in build_stages("standard", m, 3, n_queries=50, **kw)] == ["APGD-CE-7", "APGD-DLR-7",
                                                                                     "Square-50"]
    with pytest.raises(ValueError, match="unknown attack set 'autoattack'"):
        build_stages("autoattack", m, 10, **kw)


def test_pgd_ce_set_is_the_quick_suite(robust_cnn, test_images):
    ds = test_images.subset(torch.arange(100))
    quick = evaluate_robustness(robust_cnn, ds, eps=EPS, steps=5, batch_size=50, per_sample=True)
    same = evaluate_worst_case(robust_cnn, ds, eps=EPS, attacks="pgd-ce", steps=5, batch_size=50, per_sample=True)
    assert torch.equal(quick["robust_mask"], same["robust_mask"]) and quick["robust_acc"] == same["robust_acc"]


# ---- the worst case on a real robust model and on its softened twin -----------------------
@pytest.fixture(scope="module")
def worst_cases(robust_cnn, test_images):
    return {t: evaluate_worst_case(Tempered(robust_cnn, t) if t != 1 else robust_cnn, test_images, eps=EPS,
                                   steps=20, batch_size=250, per_sample=True)  # the default set
            for t in (1, TEMPERATURE)}


def test_worst_case_combines_the_two_attacks_per_sample(worst_cases):
    res = worst_cases[1]
    ce, dlr = res["attacks"]
    n = res["n"]
    assert res["attack"] == "worst of APGD-CE-20, APGD-T-20x3" and res["attack_set"] == DEFAULT_ATTACKS == "apgd-ce+t"
    assert ce["run_on"] == dlr["run_on"] == round(res["clean_acc"] * n)  # both attack every clean-correct sample
    assert res["robust_acc"] == pytest.approx(res["clean_acc"] - (ce["fooled"] + dlr["fooled"]) / n)
    # the worst case is at most each attack alone, and at least what either leaves minus the other's share
    assert res["robust_acc"] <= min(ce["robust_acc_alone"], dlr["robust_acc_alone"])
    assert res["robust_acc"] >= ce["robust_acc_alone"] + dlr["robust_acc_alone"] - res["clean_acc"] - 1e-9
    assert int(res["robust_mask"].sum()) == round(res["robust_acc"] * n)
    assert 0.3 < res["robust_acc"] < res["clean_acc"]  # a robust model, and the attacks do something


def test_ce_vs_margin_warning_fires_on_the_softened_model_only(worst_cases, caplog):
    honest, soft = worst_cases[1], worst_cases[TEMPERATURE]
    assert honest["ce_vs_margin"]["ok"] and honest["warnings"] == [], honest["ce_vs_margin"]
    check = soft["ce_vs_margin"]
    assert not check["ok"] and soft["warnings"] == [check["message"]], check
    assert check["values"]["gap_points"] >= 2
    # dividing the logits changes no prediction, so the worst case sees through the softening
    assert abs(soft["robust_acc"] - honest["robust_acc"]) <= 0.02, (soft["robust_acc"], honest["robust_acc"])
    # ... while CE alone overstates the softened model's robustness
    assert soft["attacks"][0]["robust_acc_alone"] >= honest["attacks"][0]["robust_acc_alone"] + 0.02


def test_the_warning_is_logged_for_library_callers(robust_cnn, test_images, caplog):
    ds = test_images.subset(torch.arange(150))
    with caplog.at_level("WARNING", logger="rrm_fast.eval"):
        res = evaluate_worst_case(Tempered(robust_cnn, TEMPERATURE), ds, eps=EPS, attacks="pgd-ce+cw", steps=10,
                                  batch_size=150)
    assert res["warnings"] and any("points more than CE" in r.getMessage() for r in caplog.records)


def test_gradient_masking_checks_include_ce_vs_margin(robust_cnn):
    x, y = fmnist("test", 500)
    kw = dict(eps=EPS, steps=10, batch_size=250, square_queries=50)
    honest = gradient_masking_checks(robust_cnn, x, y, **kw)
    soft = gradient_masking_checks(Tempered(robust_cnn, TEMPERATURE), x, y, **kw)
    pick = lambda d: next(c for c in d["checks"] if c["name"] == "ce_vs_margin")
    assert pick(honest)["ok"] and not pick(soft)["ok"], (pick(honest), pick(soft))
    assert any(w.startswith("ce_vs_margin:") for w in soft["warnings"])


def test_standard_is_the_standard_attack_set(robust_cnn, test_images):
    ds = test_images.subset(torch.arange(60))
    kw = dict(eps=EPS, steps=5, n_targets=2, n_queries=30, batch_size=30)
    std = evaluate_standard(robust_cnn, ds, **kw)
    wc = evaluate_worst_case(robust_cnn, ds, attacks="standard", per_sample=True, **kw)
    assert std["attack"] == wc["attack"] == "APGD-CE-5 -> APGD-T-5x2 -> Square-30"
    assert torch.equal(std["robust_mask"], wc["robust_mask"]) and std["robust_acc"] == wc["robust_acc"]
    assert [r["run_on"] for r in std["attacks"][1:]] == [round(r["robust_acc_after"] * 60) for r in std["attacks"][:-1]]


def test_the_table_prints_each_attack_alone_the_time_split_and_the_warning():
    from rrm_fast.eval.report import format_robust_table
    res = {"n": 200, "norm": "Linf", "eps": 0.1, "suite": "worst-case", "attack_precision": "fp32", "clean_acc": 0.8,
           "robust_acc": 0.4, "attack": "worst of APGD-CE-50, APGD-T-50x3", "warnings": ["the margin attack finds ..."],
           "attacks": [{"attack": "APGD-CE-50", "run_on": 160, "fooled": 60, "robust_acc_after": 0.5,
                        "robust_acc_alone": 0.5, "seconds": 30.0},
                       {"attack": "APGD-T-50x3", "run_on": 160, "fooled": 20, "robust_acc_after": 0.4,
                        "robust_acc_alone": 0.42, "seconds": 10.0}]}
    lines = format_robust_table(res, "fashion_mnist/test").splitlines()
    assert lines[3].split() == ["APGD-CE-50", "160", "60", "50.00%", "50.00%", "30.0s"]
    assert lines[4].split() == ["APGD-T-50x3", "160", "20", "40.00%", "42.00%", "10.0s"]
    assert lines[5].split()[:3] == ["worst", "case", "40.00%"] and "(worst of APGD-CE-50, APGD-T-50x3)" in lines[5]
    assert lines[6] == "  time: APGD-CE-50 30.0s (75%), APGD-T-50x3 10.0s (25%)"
    assert lines[7] == "  [WARN] the margin attack finds ..."
