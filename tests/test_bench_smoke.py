"""The benchmark harnesses' code paths on tiny budgets (no timing is asserted anywhere here):
``python -m rrm_fast.bench claims`` end to end (a few hundred images, one epoch) writing its
JSON, Markdown and PNG; the claim verdicts on hand-made curves; ``steps`` on a small batch;
and the command dispatch."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrm_fast.bench import claims, claims_report, compare, harness, steps, timing, transfer_report
from rrm_fast.bench.__main__ import main as bench_main
from rrm_fast.bench.timing import interleaved_times, per_round_median

TINY = ["--train-size", "256", "--monitor-size", "64", "--test-size", "64", "--epochs", "1", "--teacher-epochs", "1",
        "--attack-steps", "2", "--monitor-steps", "2", "--eval-steps", "2", "--standard-size", "8",
        "--standard-queries", "10"]
PAIR, MONITOR = "worst of APGD-CE-2, APGD-T-2x3", "worst of PGD-2-CE, PGD-2-DLR"  # TINY's attacks, as reports name them
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# results files made before the honest default (CE-only PGD-20), as committed on 22 Nov 2026:
# a user's old results must still render, and say what their figures are
CE_ONLY = Path(__file__).resolve().parent / "fixtures" / "ce_only_results"


@pytest.mark.slow
def test_claims_end_to_end_writes_json_table_and_plot(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--out", str(out), "--runs-dir", str(runs), "--methods", "pgd_at,fast_at,free_at,rrm", "--threads", "1",
            *TINY]
    threads = torch.get_num_threads()
    assert claims.main(argv) == 0
    assert torch.get_num_threads() == threads  # restored after the call
    res = json.loads((out / "claims.json").read_text())
    assert res["settings"]["clock"] == "thread" and res["machine"]["torch_threads"] == 1
    assert res["method_order"] == ["pgd_at", "fast_at", "free_at", "rrm"] and set(res["rows"]) == set(res["method_order"])
    for r in res["rows"].values():  # the trainer's honest defaults, at TINY's steps
        assert r["curve"] and r["test"]["n"] == 64 and r["test"]["attack"] == PAIR and r["train_seconds"] > 0
        assert r["test"]["attack_set"] == "apgd-ce+t" and {p["attack"] for p in r["curve"]} == {MONITOR}
        assert r["test_standard"]["n"] == 8 and r["test_standard"]["attack"].startswith("APGD-CE-100 -> APGD-T-100x9")
    assert res["teacher"]["trained_in_this_session"] and res["teacher"]["train_seconds"] > 0
    # the teacher is attacked exactly as the students
    assert res["teacher"]["test"]["attack"] == PAIR and res["teacher"]["test_standard"]["n"] == 8
    cl = res["claims"]
    assert 0 <= cl["target"] <= 1
    assert {(c["baseline"], c["teacher_included"]) for c in cl["test"]} == {
        (b, t) for b in ("pgd_at", "fast_at", "free_at") for t in (False, True)}
    rows = res["rows"]
    for c in cl["test"]:  # each verdict is the one its own numbers give
        b = rows[c["baseline"]]
        assert c["rrm_test_robust"] == rows["rrm"]["test_robust"] and c["baseline_test_robust"] == b["test_robust"]
        assert c["time_ratio"] == pytest.approx(c["rrm_seconds"] / c["baseline_seconds"])
        acc_ok = c["robust_ratio"] is None or c["robust_ratio"] >= 0.9
        bound = c["time_ratio"] <= 0.2 if c["baseline"] == "pgd_at" else c["time_ratio"] < 1
        assert c["holds"] == (acc_ok and bound), c
    md = (out / "claims.md").read_text()
    assert "## Claims" in md and "claims.png" in md and ("holds" in md or "DOES NOT HOLD" in md)
    assert f"test robust % ({PAIR}) | standard (first 8) % |" in md and f"robust accuracy under {MONITOR}" in md
    assert "`--eval-attacks apgd-ce+t`" in md and "PGD-20" not in md and "**CE-only figures.**" not in md
    assert (out / "claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation with the same settings reuses every finished run and says so
    assert claims.main(argv) == 0
    res2 = json.loads((out / "claims.json").read_text())
    assert all(r["reused"] for r in res2["rows"].values())
    assert "reusing the finished runs of an earlier invocation" in (out / "claims.md").read_text()


def test_claims_tables_name_the_attacks_of_the_reports_and_old_results_still_render():
    """Rendering only, from results files: the committed claims.json (CE-only PGD-20, made before
    the honest default) renders and says what its figures are; the same results with honest
    reports name those reports' attacks, carry the standard column and list each CE-vs-margin
    warning with its numbers; a --eval-attacks pgd-ce run is called CE-only."""
    old = json.loads((CE_ONLY / "claims_cpu_claims.json").read_text())
    md = claims_report.render_markdown(copy.deepcopy(old))
    assert "test robust % (PGD-20) | standard % |" in md and "robust accuracy under PGD-10 on the held-out" in md
    assert "**CE-only figures.** The test figures and the held-out curves" in md and "predate that default" in md
    assert "was not run for these results" in md

    new = copy.deepcopy(old)
    new["settings"].update(eval_attacks="apgd-ce+t", monitor_attacks="pgd-ce+dlr")
    warning = "APGD-CE-50 61.00%, APGD-T-50x3 52.00% on the same 200 samples -- the margin attack finds 9.0 points more"
    for i, r in enumerate([new["teacher"], *new["rows"].values()]):
        r["test"] = {**r["test"], "attack": PAIR, "attack_set": "apgd-ce+t", "warnings": [warning] if i == 4 else []}
        r["test_standard"] = {"n": 500, "robust_acc": 0.4 + i / 100, "attack": "APGD-CE-100 -> APGD-T-100x9 -> Square-5000"}
        for p in r["curve"]:
            p["attack"] = MONITOR
    md = claims_report.render_markdown(new)
    assert f"test robust % ({PAIR}) | standard (first 500) % |" in md and f"robust accuracy under {MONITOR}" in md
    assert "| teacher (fast_at cnn_small) |" in md and "| 65.70 | 40.00 | - | - |" in md  # the teacher's standard cell
    assert f"- RRM: {warning}" in md and "PGD-20" not in md and "**CE-only figures.**" not in md
    assert f"### Final models, test split (robust accuracy under {PAIR})" in md
    new["settings"]["eval_attacks"] = "pgd-ce"
    for r in [new["teacher"], *new["rows"].values()]:
        r["test"].update(attack="PGD-20", attack_set="pgd-ce")
    md = claims_report.render_markdown(new)
    assert "**CE-only figures.** The test figures come" in md and "predate" not in md


def _attack_names(obj) -> list[str]:
    """The attacks named behind every robust figure of a results file: each string under an
    "attack" key, except a per-attack stage's own (it has "run_on") inside a worst-case figure."""
    if isinstance(obj, dict):
        own = [obj["attack"]] if isinstance(obj.get("attack"), str) and "run_on" not in obj else []
        return own + [a for v in obj.values() for a in _attack_names(v)]
    return [a for v in obj for a in _attack_names(v)] if isinstance(obj, list) else []


@pytest.mark.parametrize("path, renderer", [
    ("claims_cpu/claims", claims_report.render_markdown),
    ("method_comparison_fmnist", compare.render_markdown),
    ("method_comparison_fmnist_teacher_head", compare.render_markdown),
    ("transfer_cpu_10k/transfer", transfer_report.render_markdown),
])
def test_committed_results_are_honest_and_their_tables_regenerated(path, renderer):
    """Issue 13: every committed harness table is the renderer's output of its own JSON (no hand
    edits), and every robust figure in it comes from attacks that include a margin loss
    (APGD-T, DLR or CW), never CE-only PGD."""
    res = json.loads((RESULTS / f"{path}.json").read_text())
    assert renderer(res) == (RESULTS / f"{path}.md").read_text()
    attacks = _attack_names(res)
    assert attacks and all(any(m in a for m in ("APGD-T", "DLR", "CW")) for a in attacks), sorted(set(attacks))


def test_compare_tables_name_the_attacks_and_old_results_still_render():
    for name in ("method_comparison_fmnist.json", "method_comparison_fmnist_teacher_head.json"):
        md = compare.render_markdown(json.loads((CE_ONLY / name).read_text()))
        assert "| robust % (PGD-20 x1 (Linf eps=0.1)) | standard % |" in md and "This table predates that default" in md
    res = json.loads((CE_ONLY / "method_comparison_fmnist.json").read_text())
    res["settings"]["eval_attacks"] = "apgd-ce+t"
    warning = "PGD-2-CE 50.00%, PGD-2-DLR 40.00% on the same 10 samples -- the margin attack finds 10.0 points more"
    for i, r in enumerate(res["rows"] + res["teachers"]):
        r.update(attack=f"{PAIR} (Linf eps=0.1)", heldout_attack=MONITOR,
                 test={"attack": PAIR, "attack_set": "apgd-ce+t", "warnings": [warning] if i == 4 else []},
                 standard={"n": 200, "robust_acc": 0.25, "attack": "APGD-CE-100 -> APGD-T-100x9 -> Square-5000"})
    md = compare.render_markdown(res)
    assert md.count(f"| robust % ({PAIR} (Linf eps=0.1)) | standard (first 200) % |") == 2  # methods and teachers
    assert "| rrm | fast_at cnn_small | 70.30 | 47.40 | 25.00 |" in md and f"check under {MONITOR}" in md
    assert f"- rrm: {warning}" in md and "**CE-only figures.**" not in md and "the first 200 of those 1000 test images" in md


def test_the_clock_switch():
    """One switch: wall (perf_counter) or thread (this thread's CPU time, which sleeping does not
    advance); auto picks thread only where it counts all the work (CPU, one torch thread)."""
    import time

    read = timing.clock("thread")
    t0 = read()
    time.sleep(0.2)  # sleeping is no CPU work
    assert read() - t0 < 0.1 and timing.clock("wall") is time.perf_counter
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="--threads 1"):
            timing.resolve_clock("thread", "cpu")
        assert timing.resolve_clock("auto", "cpu") == "wall"
        torch.set_num_threads(1)
        assert timing.resolve_clock("auto", "cpu") == "thread" and harness.resolve_clock("cpu", "cpu") == "thread"
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="unknown clock"):
        timing.clock("sundial")


def _row(curve, test_robust, train_seconds, uses_teacher=False):
    return {"curve": [{"epoch": i + 1, "seconds": t, "clean": 0.8, "robust": a} for i, (t, a) in enumerate(curve)],
            "test_robust": test_robust, "train_seconds": train_seconds, "uses_teacher": uses_teacher}


def test_claim_verdicts_on_hand_made_curves():
    teacher = {"train_seconds": 10.0, "test": {"robust_acc": 0.5}}
    rows = {"pgd_at": _row([(100, 0.50), (200, 0.60)], 0.60, 200),  # target = 0.9 * 0.60 = 0.54
            "fast_at": _row([(50, 0.40), (100, 0.45)], 0.45, 100),  # never reaches the target
            "rrm": _row([(15, 0.50), (30, 0.56)], 0.55, 30, uses_teacher=True)}
    cl = claims.compute_claims(rows, teacher, "pgd_at", 0.9, 0.2)
    assert cl["target"] == pytest.approx(0.54)
    assert cl["transfer"]["ratio"] == pytest.approx(0.55 / 0.5) and cl["transfer"]["teacher_vs_reference"] == pytest.approx(0.5 / 0.6)
    test = {(c["baseline"], c["teacher_included"]): c for c in cl["test"]}
    # 0.55 / 0.60 = 0.917 >= 0.9, and 30 s <= 0.2 * 200 s; with the teacher 40 s: still <= 40 s
    assert test["pgd_at", False]["holds"] and test["pgd_at", False]["time_ratio"] == pytest.approx(0.15)
    assert test["pgd_at", True]["holds"] and test["pgd_at", True]["rrm_seconds"] == pytest.approx(40)
    ttt = {(c["baseline"], c["teacher_included"]): c for c in cl["time_to_target"]}
    assert ttt["pgd_at", False]["speedup"] == pytest.approx(200 / 30)
    assert ttt["pgd_at", True]["speedup"] == pytest.approx(200 / 40)
    # a baseline that never reaches the target: the speed-up is a lower bound from its whole budget
    assert ttt["fast_at", False]["speedup_is_lower_bound"] and ttt["fast_at", False]["speedup"] == pytest.approx(100 / 30)

    # RRM too weak: the acceptance claim fails and says so
    rows["rrm"] = _row([(15, 0.40), (30, 0.50)], 0.50, 30, uses_teacher=True)
    cl = claims.compute_claims(rows, teacher, "pgd_at", 0.9, 0.2)
    test = {(c["baseline"], c["teacher_included"]): c for c in cl["test"]}
    assert not test["pgd_at", False]["holds"] and test["pgd_at", False]["robust_ratio"] == pytest.approx(0.5 / 0.6)
    ttt = {(c["baseline"], c["teacher_included"]): c for c in cl["time_to_target"]}
    assert ttt["pgd_at", False]["holds"] is False and ttt["pgd_at", False]["speedup"] is None

    # RRM fast enough on accuracy but too slow: fails on the time ratio
    rows["rrm"] = _row([(50, 0.56)], 0.58, 50, uses_teacher=True)
    test = {(c["baseline"], c["teacher_included"]): c for c in claims.compute_claims(rows, teacher, "pgd_at", 0.9, 0.2)["test"]}
    assert not test["pgd_at", False]["holds"] and test["pgd_at", False]["time_ratio"] == pytest.approx(0.25)


def test_claims_without_reference_or_rrm_make_no_claims():
    rows = {"rrm": _row([(10, 0.5)], 0.5, 10, True)}
    assert claims.compute_claims(rows, None, "pgd_at", 0.9, 0.2)["notes"]
    rows = {"pgd_at": _row([(10, 0.5)], 0.5, 10)}
    cl = claims.compute_claims(rows, None, "pgd_at", 0.9, 0.2)
    assert not cl["test"] and any("no rrm" in n for n in cl["notes"])


def test_claims_rejects_unknown_methods(capsys):
    assert claims.main(["--methods", "pgd_at,nonsense"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_steps_small_batch_report(tmp_path):
    out = tmp_path / "steps.md"
    assert steps.main(["--reps", "2", "--warmup", "1", "--batch-size", "8", "--pgd-steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["median_s"]) == {"natural", "teacher_forward", "rrm", "rrm_variant", "attack_pass", "pgd_at_2",
                                    "no_grad_forward", "linf_step_op"}
    assert all(len(v) == 2 for v in res["times_s"].values())
    assert res["ratios"]["rrm_vs_natural_plus_teacher"] > 0 and res["ratios"]["pgd_at_2_vs_ideal"] > 0
    assert "rrm / (natural + teacher_forward)" in out.read_text()


def test_interleaved_timing_rotates_and_pairs_rounds():
    order = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, steps.torch.device("cpu"),
                              reps=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then each round starts one later
    assert per_round_median({"x": [1.0, 2.0, 3.0], "y": [1.0, 1.0, 1.0]}, lambda t: t["x"] / t["y"]) == 2.0
    assert all(len(v) == 3 for v in times.values())


def test_bench_dispatch(capsys):
    assert bench_main([]) == 2 and "claims" in capsys.readouterr().out
    assert bench_main(["nonsense"]) == 2 and "unknown command" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "rrm_fast.bench", "steps", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--pgd-steps" in r.stdout
