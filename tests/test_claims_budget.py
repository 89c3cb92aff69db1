"""Equal-time claims: the time-budget stop on a fake clock, the epoch plan, the claim verdicts
on hand-made rows, and ``claims --equal-time`` end to end on a tiny budget; the transfer
study's pipeline on a tiny budget."""
import json

import pytest

from helpers import metrics_rows
from rrm_fast.bench import claims, transfer
from rrm_fast.bench.claims_budget import TOLERANCE, TimeBudget, equal_time_claims, plan_epochs
from rrm_fast.eval import evaluate_robustness
from rrm_fast.train import Callback, TrainConfig, train_run


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(Callback):
    """Each minibatch takes ``seconds[epoch]`` on the fake clock."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds = clock, seconds

    def on_batch_end(self, trainer, x, y, res):
        self.clock.now += self.seconds[trainer.progress.epoch]


SMALL = dict(method="natural", student="cnn_small", train_size=200, batch_size=50, monitor_size=50, monitor_steps=1,
             eval_steps=1, test_size=50, epochs=6)  # 4 minibatches an epoch


@pytest.mark.parametrize("budget,pace,stops_after", [
    (35.0, [2.5] * 6, 3),           # 10 s epochs: after 3 (30 s) a 4th would end at 40 > 35 * 1.05
    (38.0, [2.5] * 6, 3),           # 40 > 39.9: still 3
    (38.1, [2.5] * 6, 4),           # 40 <= 40.005: a 4th fits within the tolerance
    (35.0, [2.5, 5, 5, 5, 5, 5], 2),  # the pace doubles in epoch 2: 30 s spent, one more at 15 s/epoch overruns
    (1000.0, [2.5] * 6, 6),         # the budget never binds: the planned epochs run out first
])
def test_time_budget_stops_at_the_right_epoch_on_a_fake_clock(tmp_path, budget, pace, stops_after):
    clock = FakeClock()
    rep = train_run(TrainConfig(out=str(tmp_path), **SMALL), progress=False, clock=clock,
                    callbacks=[Tick(clock, pace), TimeBudget(budget)])
    assert rep["epochs_run"] == stops_after == len(metrics_rows(tmp_path))
    assert rep["train_seconds"] == pytest.approx(sum(4 * s for s in pace[:stops_after]))
    assert (rep["stopped_early"] is None) == (stops_after == 6), rep["stopped_early"]
    if rep["stopped_early"]:
        assert rep["stopped_early"].startswith(f"time budget: {rep['train_seconds']:.1f} s of {budget:.1f} s")


def test_the_plan_fits_the_budget_and_free_at_asks_for_its_replays():
    assert TOLERANCE == 0.05
    assert plan_epochs(370.0, 15.4) == 25 and plan_epochs(370.0, 133.0) == 2 and plan_epochs(10.0, 100.0) == 1
    assert plan_epochs(100.0, 10.0) == 10 and plan_epochs(100.0, 9.5) == 11  # 100 * 1.05 / 9.5 = 11.05
    from rrm_fast.bench import harness
    assert harness.replays_of(TrainConfig(method="free_at")) == 8
    assert harness.replays_of(TrainConfig(method="free_at", method_options={"replays": 3})) == 3
    assert harness.replays_of(TrainConfig(method="rrm", teacher="cnn_small")) == 1


def _row(curve, test_robust, seconds, uses_teacher=False):
    return {"curve": [{"seconds": s, "robust": r} for s, r in curve], "test_robust": test_robust,
            "train_seconds": seconds, "uses_teacher": uses_teacher}


def test_equal_time_claims_by_hand():
    rows = {"pgd_at": _row([(100, 0.50), (300, 0.70)], 0.68, 300),
            "fast_at": _row([(40, 0.55), (300, 0.66)], 0.66, 300),
            "free_at": _row([(150, 0.60), (300, 0.69)], 0.70, 300),
            "rrm": _row([(60, 0.64), (90, 0.67), (300, 0.71)], 0.67, 300, uses_teacher=True)}
    out = equal_time_claims(rows, {"train_seconds": 50.0}, "pgd_at", 300.0)
    assert out["target"] == pytest.approx(0.63)
    acc, excl, incl = out["claims"]
    assert acc["baseline_name"] == "free_at" and acc["ratio"] == pytest.approx(0.67 / 0.70) and acc["holds"]  # 0.957
    assert excl["rrm_seconds"] == 60 and excl["ratio"] == pytest.approx(0.2) and excl["holds"]
    assert incl["rrm_seconds"] == 110 and not incl["holds"]  # 110 > 100 = 300 / 3
    assert rows["pgd_at"]["time_to_target"] == 300 and rows["fast_at"]["time_to_target"] == 300
    rows["rrm"]["test_robust"] = 0.66
    assert not equal_time_claims(rows, None, "pgd_at", 300.0)["claims"][0]["holds"]  # 0.943 < 0.95
    rows["rrm"]["curve"] = [{"seconds": 300, "robust": 0.6}]
    assert equal_time_claims(rows, None, "pgd_at", 300.0)["claims"][1]["rrm_seconds"] is None  # never: does not hold


TINY = ["--train-size", "256", "--monitor-size", "64", "--test-size", "64", "--epochs", "1", "--teacher-epochs", "1",
        "--attack-steps", "2", "--monitor-steps", "2", "--eval-steps", "2", "--standard-size", "6",
        "--standard-queries", "10"]


@pytest.mark.slow
def test_claims_equal_time_end_to_end(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--out", str(out), "--runs-dir", str(runs), "--methods", "pgd_at,free_at,rrm", "--threads", "1",
            "--equal-time", *TINY]
    assert claims.main(argv) == 0
    res = json.loads((out / "claims.json").read_text())
    et = res["equal_time"]
    assert et["budget_s"] == res["rows"]["pgd_at"]["train_seconds"] and set(et["rows"]) == {"pgd_at", "free_at", "rrm"}
    for name in ("free_at", "rrm"):
        r = et["rows"][name]
        assert r["planned_epochs"] == plan_epochs(et["budget_s"], r["calibration_epoch_s"]) >= r["epochs_run"] >= 1
        assert r["train_seconds"] <= et["budget_s"] * (1 + TOLERANCE) or r["epochs_run"] == 1
        assert r["run_dir"].endswith(f"equal_time/{name}")
    assert (out / "claims_equal_time.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "claims.md").read_text()
    assert "## Equal training time" in md and "1/3 of PGD-AT's time" in md
    for r in et["rows"].values():  # the equal-time runs are measured as the equal-epoch ones
        assert r["test"]["attack"] == "worst of APGD-CE-2, APGD-T-2x3" and r["test_standard"]["n"] == 6
    assert md.count("| test robust % (worst of APGD-CE-2, APGD-T-2x3) | standard (first 6) % |") == 2
    assert claims.main(argv) == 0  # the equal-time runs are reused with the same budget
    assert all(r["reused"] for r in json.loads((out / "claims.json").read_text())["equal_time"]["rows"].values())


@pytest.mark.slow
def test_transfer_study_end_to_end_and_resumable(tmp_path):
    # a real (CE-only) evaluation stands in for speed; the study's own is evaluate_worst_case
    argv = ["--quick", "--rows", "default,paper,no_teacher", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out")]
    assert transfer.main(argv, evaluate=evaluate_robustness) == 0
    res = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["default", "paper", "no_teacher"]
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["default"]["options"] == {} and rows["paper"]["options"] == transfer.PAPER
    assert {"test" in r for r in res["rows"]} == {True, False} and "test" not in rows["no_teacher"]
    teacher = res["teachers"][0]["heldout"]["robust"]
    for r in res["rows"]:
        assert r["heldout"]["n"] == 64 and (teacher == 0 or r["ratio"] == pytest.approx(r["heldout"]["robust"] / teacher))
    md = (tmp_path / "out" / "transfer.md").read_text()
    assert "Without the teacher" in md and "Quick run" in md
    assert transfer.main(argv, evaluate=evaluate_robustness) == 0
    assert all(r["reused"] for r in json.loads((tmp_path / "out" / "transfer.json").read_text())["rows"])
