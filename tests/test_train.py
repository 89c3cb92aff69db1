"""The trainer end to end on small real Fashion-MNIST subsets and on a generated image folder;
its TensorBoard events, its clock, its configuration files and its one-line errors."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, child_env, flags, metrics_rows, write_image_folder
from rrm_fast.checkpoint import load_model
from rrm_fast.data import load_dataset
from rrm_fast.eval import evaluate_worst_case
from rrm_fast.train import Callback, TrainConfig, main, train_run

SMALL = dict(train_size=600, test_size=200, monitor_size=100, monitor_steps=2, eval_steps=3, batch_size=100)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    rep = train_run(TrainConfig(method="fast_at", student="cnn_small", epochs=1, out=str(out), **SMALL), progress=False)
    return rep["checkpoint"]


@pytest.mark.parametrize("method", ["natural", "pgd_at", "fast_at", "free_at"])
def test_each_baseline_trains_and_evaluates(method, tmp_path):
    cfg = TrainConfig(method=method, student="cnn_small", epochs=1, attack_steps=2, out=str(tmp_path),
                      method_options={"replays": 2} if method == "free_at" else {}, **SMALL)
    rep = train_run(cfg, progress=False)
    rows = metrics_rows(tmp_path, drop=())
    assert len(rows) == 1 and math.isfinite(rows[0]["loss"]) and rows[0]["heldout_attack"] == "worst of PGD-2-CE, PGD-2-DLR"
    assert rows[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule (cosine; cyclic for fast_at) ran to its end
    for name in ("config.json", "report.json", "final.safetensors", "final.json", "last.safetensors"):
        assert (tmp_path / name).exists(), name
    # the report's test figures are those of the saved checkpoint, re-evaluated through the public API
    model, _ = load_model(rep["checkpoint"])
    test_ds = load_dataset("fashion_mnist", "test").subset(torch.arange(SMALL["test_size"]))
    ev = evaluate_worst_case(model.to(memory_format=torch.channels_last), test_ds, eps=cfg.eps, steps=cfg.eval_steps,
                             batch_size=500, seed=0, channels_last=True)
    assert (ev["n"], ev["clean_acc"], ev["robust_acc"]) == (200, rep["test"]["clean_acc"], rep["test"]["robust_acc"])
    # the figure is the per-sample worst case over a CE and a margin attack, and says so
    assert rep["test"]["attack"] == "worst of APGD-CE-3, APGD-T-3x3" and rep["test"]["attack_set"] == "apgd-ce+t"
    assert [r["attack"] for r in rep["test"]["attacks"]] == ["APGD-CE-3", "APGD-T-3x3"]
    assert "ce_vs_margin" in rep["test"] and rep["test_standard"] is None


def test_rrm_student_of_another_architecture(teacher_ckpt, tmp_path):
    cfg = TrainConfig(method="rrm", student="cnn_wide", teacher=teacher_ckpt, head_init="teacher", epochs=1,
                      out=str(tmp_path), **SMALL)
    rep = train_run(cfg, progress=False)
    assert rep["method"] == "rrm" and rep["test"]["n"] == 200
    meta = json.loads((tmp_path / "final.json").read_text())
    assert meta["model"]["feature_dim"] == 128  # projected to the teacher's width


def test_eval_cli_reproduces_the_trainers_figure(teacher_ckpt, tmp_path):
    # the teacher fixture's report came from the trainer's final evaluation
    report = json.loads((__import__("pathlib").Path(teacher_ckpt).parent / "report.json").read_text())
    out = tmp_path / "e.json"
    # --diag-size 0: the gradient-masking checks (tested in tests/test_eval.py) do not change the figure
    r = subprocess.run([sys.executable, "-m", "rrm_fast.eval", teacher_ckpt, "--suite", "worst-case", "--steps", "3",
                        "--test-size", "200",
                        "--diag-size", "0", "--out", str(out)], capture_output=True, text=True, env=child_env())
    assert r.returncode == 0, r.stderr
    ev = json.loads(out.read_text())
    assert ev["robust_acc"] == pytest.approx(report["test"]["robust_acc"]) and ev["attack"] == report["test"]["attack"]
    assert ev["clean_acc"] == pytest.approx(report["test"]["clean_acc"])


@pytest.mark.slow
def test_pgd_at_is_far_more_robust_than_natural(tmp_path):
    common = dict(student="cnn_small", epochs=2, train_size=6000, test_size=1000, monitor_size=200, monitor_steps=2,
                  eval_steps=10, batch_size=128, lr=0.05)
    nat = train_run(TrainConfig(method="natural", out=str(tmp_path / "n"), **common), progress=False)
    adv = train_run(TrainConfig(method="pgd_at", attack_steps=5, out=str(tmp_path / "a"), **common), progress=False)
    # measured on the 2-core CPU: natural 32.8% vs PGD-AT 56.0% PGD-10 (a 2-epoch natural model on 6k
    # images is still smooth); demand a gap of 15 points, far beyond seed-to-seed noise
    assert adv["test"]["robust_acc"] > nat["test"]["robust_acc"] + 0.15, (nat["test"], adv["test"])


TINY = dict(method="natural", epochs=2, train_size=200, test_size=50, monitor_size=50, monitor_steps=1, eval_steps=1,
            batch_size=50)


class FakeClock(Callback):
    """A clock that moves only when a minibatch ends, by 10 s: the trainer must time epochs with it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_batch_end(self, trainer, x, y, res):
        self.now += 10.0


def test_epochs_are_timed_with_the_injected_clock(tmp_path):
    clock = FakeClock()
    rep = train_run(TrainConfig(out=str(tmp_path), log_every=1, **TINY), progress=False, clock=clock, callbacks=[clock])
    rows = metrics_rows(tmp_path, drop=())
    assert [r["epoch_seconds"] for r in rows] == [40.0, 40.0]  # 4 minibatches of 10 s each, writes excluded
    assert [r["images_per_second"] for r in rows] == [200 / 40.0, 200 / 40.0]
    assert rep["train_seconds"] == 80.0


def test_tensorboard_events_hold_the_run_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rep = train_run(TrainConfig(out=str(tmp_path), log_every=2, **TINY), progress=False)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    rows = metrics_rows(tmp_path, drop=())
    for key in ("loss", "ce", "train_acc", "heldout_clean_acc", "heldout_robust_acc", "images_per_second", "lr"):
        scalars = events.Scalars(f"epoch/{key}")
        assert [s.step for s in scalars] == [4, 8], key  # x axis: minibatches done at each epoch end
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    for key in ("loss", "ce", "lr", "images_per_second"):
        assert [s.step for s in events.Scalars(f"step/{key}")] == [2, 4, 6, 8], key
    assert events.Scalars("test/robust_acc")[0].value == pytest.approx(rep["test"]["robust_acc"])
    assert {"epoch/epoch_seconds", "test/clean_acc"} <= tags


def test_imagefolder_trains_end_to_end_from_the_cli(tmp_path):
    """--dataset imagefolder on a generated ImageNet-style tree of JPEG and PNG files of mixed sizes."""
    data = write_image_folder(tmp_path / "images")
    assert {p.suffix for p in (data / "train").rglob("*.*")} == {".jpg", ".png"}
    out = tmp_path / "run"
    argv = ["--method", "natural", "--dataset", "imagefolder", "--data-dir", str(data), "--resolution", "32",
            "--loader", "torch", "--out", str(out), "--no-progress",
            *flags(epochs=1, batch_size=6, monitor_size=6, monitor_steps=1, eval_steps=1)]
    r = subprocess.run([sys.executable, "-m", "rrm_fast.train", *argv], capture_output=True, text=True, cwd=REPO,
                       env=child_env())
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "imagefolder" and report["test"]["n"] == 12  # 3 classes x 4 val images
    assert json.loads((out / "config.json").read_text())["resolution"] == 32
    meta = json.loads((out / "final.json").read_text())
    assert meta["model"]["num_classes"] == 3 and meta["model"]["in_channels"] == 3 and meta["model"]["image_size"] == 32


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rrm_fast.train", "--no-progress", *args], capture_output=True,
                          text=True, cwd=cwd, env=child_env())


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "invalid choice: 'nope'"),
    (["--method", "natural", "--student", "resnet7"], "unknown --student 'resnet7'"),
    (["--method", "natural", "--eps", "-1"], "--eps must be >= 0"),
    (["--method", "natural", "--attack-steps", "0"], "must be >= 1"),
    (["--method", "natural", "--epochs", "two"], "--epochs: expected int, got two"),
    (["--method", "rrm"], "needs a teacher"),
    (["--method", "natural", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
    (["--method", "rrm", "--teacher", "/nonexistent/t.safetensors"], "not found"),
    (["--method", "natural", "--kd-temp-bogus", "3"], "unrecognized arguments"),
    (["--method", "natural", "--resume", "/nonexistent/run"], "no config.json there"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    r = cli(*args, "--out", str(tmp_path / "o"), "--train-size", "200", "--test-size", "50")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr  # one line, no traceback


def test_output_dir_holding_another_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = cli("--method", "natural", "--out", str(tmp_path), "--train-size", "200", "--test-size", "50")
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert (tmp_path / "config.json").read_text() == "{}"  # nothing overwritten


def test_config_file_keys_and_flag_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: natural\nstudent: cnn_small\nepochs: 1\ntrain-size: 300\ntest_size: 100\n"
                   "monitor_size: 100\nmonitor_steps: 1\neval_steps: 1\n")
    r = cli("--config", str(cfg), "--batch-size", "150", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    resolved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert resolved["batch_size"] == 150 and resolved["epochs"] == 1 and resolved["train_size"] == 300
    assert resolved["method"] == "natural"


def test_a_runs_config_json_is_a_config_file(tmp_path):
    """config.json of a run (method_options nested) starts the same run elsewhere; flags override."""
    from rrm_fast.train.cli import parse

    saved = TrainConfig(method="rrm", teacher="cnn_small", method_options={"xent_weight": 0.02}, epochs=3,
                        out=str(tmp_path / "old"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(__import__("dataclasses").asdict(saved)))
    cfg = parse(["--config", str(path), "--out", str(tmp_path / "new"), "--feat-weight", "2"]).cfg
    assert cfg.method_options == {"xent_weight": 0.02, "feat_weight": 2.0} and cfg.epochs == 3
    assert cfg.out == str(tmp_path / "new") and cfg.teacher == "cnn_small"


@pytest.mark.parametrize("text, message", [
    ("method: natural\nepochs: many\n", "--epochs: expected int, got many"),
    ("method: natural\nbogus_key: 1\n", "unknown keys ['bogus_key']"),
    ("method: rrm\nxent_weight: heavy\n", "--xent-weight: expected float, got heavy"),
    ("- a list\n", "must hold a mapping"),
    ("method: rrm\nmethod_options: {feat_weight: much}\n", "--feat-weight: expected float, got much"),
    ("method: rrm\nmethod_options: {sigmaa: 1}\n", "unknown keys ['sigmaa']"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {path}") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_no_method_is_the_demo_and_flags_still_apply(tmp_path):
    from rrm_fast.train.cli import DEMO_STUDENT, DEMO_TEACHER, parse

    request = parse(["--amp", "--out", str(tmp_path / "d"), "--xent-weight", "0.01"])
    cfg = request.cfg
    assert request.demo and cfg.amp and cfg.out == str(tmp_path / "d" / "student")
    assert (cfg.method, cfg.student, cfg.head_init) == (DEMO_STUDENT["method"], DEMO_STUDENT["student"], "teacher")
    assert (cfg.teacher, cfg.teacher_method, cfg.teacher_epochs) == (DEMO_TEACHER["student"], DEMO_TEACHER["method"],
                                                                     DEMO_TEACHER["epochs"])
    assert cfg.method_options == {"xent_weight": 0.01}
    assert not parse(["--method", "natural"]).demo and parse(["--method", "natural"]).cfg == TrainConfig(method="natural")


def test_the_demo_attacks_the_teacher_exactly_as_the_student_and_keeps_the_figures(teacher_ckpt, tmp_path):
    """The demo's teacher figure comes from the student's attacks on the student's samples (not
    from the teacher's own report, which may have been made under other settings), once per setting."""
    from rrm_fast.train.check import checkpoint_figures
    from rrm_fast.train.cli import demo_summary, demo_table

    work = tmp_path / "t"
    work.mkdir()
    ckpt = work / "final.safetensors"
    for suffix in (".safetensors", ".json"):
        ckpt.with_suffix(suffix).write_bytes(Path(teacher_ckpt).with_suffix(suffix).read_bytes())
    cfg = TrainConfig(method="rrm", student="cnn_wide", **{**SMALL, "test_size": 60}, standard_size=10,
                      standard_queries=5)
    first = checkpoint_figures(cfg, str(ckpt), "cpu", progress=False)
    model, _ = load_model(str(ckpt))
    ds = load_dataset("fashion_mnist", "test").subset(torch.arange(60))
    direct = evaluate_worst_case(model.to(memory_format=torch.channels_last), ds, eps=cfg.eps, steps=cfg.eval_steps,
                                 batch_size=500, seed=0, channels_last=True)
    assert (first["test"]["n"], first["test"]["robust_acc"], first["test"]["attack"]) == (60, direct["robust_acc"],
                                                                                         direct["attack"])
    assert first["test_standard"]["n"] == 10 and first["test_standard"]["attack"].endswith("Square-5")
    kept = list(work.glob("test-eval-*.json"))
    assert len(kept) == 1
    assert checkpoint_figures(cfg, str(ckpt), "cpu", progress=False) == first  # read back, not recomputed
    other = TrainConfig(**{**dataclasses.asdict(cfg), "eval_attacks": "pgd-ce+cw"})
    assert checkpoint_figures(other, str(ckpt), "cpu", progress=False)["test"]["attack"] == "worst of PGD-3-CE, PGD-3-CW"
    assert len(list(work.glob("test-eval-*.json"))) == 2

    # a checkpoint whose own run measured it with these settings is not attacked again
    own = checkpoint_figures(TrainConfig(method="rrm", **SMALL), teacher_ckpt, "cpu", progress=False)
    assert own["test"] == json.loads((Path(teacher_ckpt).parent / "report.json").read_text())["test"]
    assert not list(Path(teacher_ckpt).parent.glob("test-eval-*.json"))

    t_rep = {"student": "cnn_small", "method": "fast_at", "train_seconds": 10.0, "images_per_second": 100.0,
             "test": {"n": 1000, "clean_acc": 0.85, "robust_acc": 0.70, "attack": "worst of A, B", "warnings": []},
             "test_standard": {"n": 200, "robust_acc": 0.69, "attack": "S"}}
    s_rep = {"student": "cnn_wide", "method": "rrm", "train_seconds": 20.0, "images_per_second": 50.0,
             "test": {"n": 1000, "clean_acc": 0.84, "robust_acc": 0.63, "attack": "worst of A, B",
                      "warnings": ["the margin attack finds 3.0 points more"]},
             "test_standard": {"n": 200, "robust_acc": 0.621, "attack": "S"}}
    summary = demo_summary(t_rep, s_rep)
    assert summary["robust_kept"] == pytest.approx(0.9) and summary["clean_gap_points"] == pytest.approx(1.0)
    assert summary["robust_kept_standard"] == pytest.approx(0.9)
    lines = demo_table(TrainConfig(test_size=1000), t_rep, s_rep, summary)
    assert "the first 1000 test images; robust = per-sample worst of A, B; standard = S on the first 200" in lines[1]
    assert lines[3].split() == ["teacher", "cnn_small", "fast_at", "85.00%", "70.00%", "69.00%", "10.0", "100"]
    assert lines[4].split() == ["student", "cnn_wide", "rrm", "84.00%", "63.00%", "62.10%", "20.0", "50"]
    assert lines[5] == ("the student keeps 90.0% of the teacher's robust accuracy (same attacks, same images); its "
                        "clean accuracy is 1.00 points below the teacher's")
    assert lines[6] == "[WARN] student: the margin attack finds 3.0 points more"

    # the natural baseline: the student's architecture without the teacher, attacked alike
    n_rep = {"student": "cnn_wide", "method": "natural", "train_seconds": 15.0, "images_per_second": 70.0, "epochs_run": 2,
             "test": {"n": 1000, "clean_acc": 0.88, "robust_acc": 0.05, "attack": "worst of A, B", "warnings": []},
             "test_standard": {"n": 200, "robust_acc": 0.04, "attack": "S"}}
    summary = demo_summary(t_rep, s_rep, n_rep)
    assert summary["natural_robust"] == 0.05 and summary["robust_over_natural_points"] == pytest.approx(58.0)
    lines = demo_table(TrainConfig(test_size=1000), t_rep, s_rep, summary, n_rep)
    assert lines[5].split() == ["natural", "cnn_wide", "natural", "88.00%", "5.00%", "4.00%", "15.0", "70"]
    assert lines[7] == ("natural training of the student's architecture (2 epochs, no teacher) reaches 5.00%: "
                        "the transfer adds 58.00 points")
    assert lines[8] == "[WARN] student: the margin attack finds 3.0 points more"


def test_the_demo_natural_baseline_is_the_student_without_its_teacher(tmp_path):
    """Same architecture, data, schedule and attacks as the demo's student, at most
    DEMO_NATURAL_EPOCHS epochs; no teacher, no RRM options; its own directory beside the student's."""
    from rrm_fast.train.cli import DEMO_NATURAL_EPOCHS, natural_config, parse

    assert DEMO_NATURAL_EPOCHS == 2 and natural_config(parse(["--out", str(tmp_path / "e")]).cfg).epochs == 2
    cfg = parse(["--amp", "--out", str(tmp_path / "d"), "--epochs", "1", "--xent-weight", "0.01"]).cfg
    nat = natural_config(cfg)
    assert (nat.method, nat.teacher, nat.head_init, nat.method_options) == ("natural", None, "random", {})
    assert nat.out == str(tmp_path / "d" / "natural")
    same = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("method", "teacher", "head_init", "method_options", "out")}
    assert {k: getattr(nat, k) for k in same} == same and nat.epochs == 1 and nat.amp


def test_the_demo_end_to_end_writes_teacher_student_and_natural(tmp_path, monkeypatch, caplog):
    """The whole demo path at a tiny size: teacher (cached under a fresh cache), student, natural
    baseline, the table and demo.json with all three and the summary."""
    from rrm_fast.train.cli import main as train_main

    monkeypatch.setenv("RRM_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--no-progress", "--epochs", "1", "--teacher-epochs", "1", "--train-size", "300",
            "--monitor-size", "50", "--monitor-steps", "1", "--test-size", "40", "--eval-steps", "2",
            "--standard-size", "0", "--batch-size", "100"]
    with caplog.at_level("INFO", logger="rrm_fast.train"):
        assert train_main(argv) == 0
    demo = json.loads((out / "demo.json").read_text())
    assert [demo[k]["method"] for k in ("teacher", "student", "natural")] == ["fast_at", "rrm", "natural"]
    assert demo["natural"]["student"] == demo["student"]["student"] == "cnn_wide"
    t, s, n = (demo[k]["test"] for k in ("teacher", "student", "natural"))
    assert t["n"] == s["n"] == n["n"] == 40 and t["attack"] == s["attack"] == n["attack"]
    assert demo["summary"]["robust_over_natural_points"] == pytest.approx(100 * (s["robust_acc"] - n["robust_acc"]))
    assert (out / "natural" / "final.safetensors").exists() and (out / "student" / "final.safetensors").exists()
    assert "natural training of the student's architecture" in caplog.text
