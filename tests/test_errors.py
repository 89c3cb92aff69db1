"""Every user-fixable problem is one clear line on stderr, a non-zero exit, and nothing
written or overwritten: bad data, class-count/feature-width mismatches, a diverging loss,
invalid values, a directory holding another run."""
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_fashion_mnist

from rrm_fast import resume as resume_mod
from rrm_fast import train as train_mod
from rrm_fast.checkpoint import save_model
from rrm_fast.models import create_model

REPO = Path(__file__).resolve().parents[1]
TINY_VALUES = {"train_size": 100, "test_size": 50, "monitor_size": 50, "monitor_steps": 1, "eval_steps": 1, "batch_size": 50,
               "epochs": 1}


def tiny(**over) -> list[str]:
    argv = ["--no-progress"]
    for k, v in {**TINY_VALUES, **over}.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


TINY = tiny()


def one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    last = err[-1]
    assert last.startswith("error: "), err
    for n in needles:
        assert n in last, (n, last)
    assert not any("Traceback" in line for line in err), err
    return last


def test_labels_outside_the_class_range(tmp_path, capsys):
    data = write_fashion_mnist(tmp_path / "fm", labels=[3] * 199 + [12])
    rc = train_mod.main(["--method", "natural", "--data-dir", str(data), "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "label 12 out of range")
    assert not (tmp_path / "o").exists()


def test_corrupt_data_file(tmp_path, capsys):
    data = write_fashion_mnist(tmp_path / "fm", truncate_images=True)
    rc = train_mod.main(["--method", "natural", "--data-dir", str(data), "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "train-images-idx3-ubyte.gz", "re-download")
    write_fashion_mnist(tmp_path / "fm")  # images fine again, labels now broken
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    rc = train_mod.main(["--method", "natural", "--data-dir", str(data), "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "not a readable gzip file")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    five = save_model(d / "five.safetensors", create_model("cnn_small", 5, 1, (0.286,), (0.353,), 28))
    small = save_model(d / "small.safetensors", create_model("cnn_small", 10, 1, (0.286,), (0.353,), 28))
    return {"five": str(five), "small": str(small)}


def test_teacher_with_another_class_count(teachers, tmp_path, capsys):
    rc = train_mod.main(["--method", "kd", "--teacher", teachers["five"], "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "predicts 5 classes but fashion_mnist has 10")
    assert not (tmp_path / "o").exists()


def test_teacher_head_of_another_feature_width(teachers, tmp_path, capsys):
    # kd matches logits only (no projection), so a 512-wide student cannot take the 128-wide head
    rc = train_mod.main(["--method", "kd", "--teacher", teachers["small"], "--student", "resnet18", "--head-init", "teacher",
                         "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "--head-init teacher needs equal classifier shapes", "(10, 512)", "(10, 128)")
    assert not (tmp_path / "o").exists()


def test_a_diverging_loss_stops_with_the_step_and_the_last_finite_value(tmp_path, capsys):
    out = tmp_path / "o"
    rc = train_mod.main(["--method", "natural", "--lr", "1e12", "--schedule", "constant", "--checkpoint-every", "2",
                         "--out", str(out), *tiny(train_size=200, epochs=2)])
    last = one_line_error(capsys, rc, "training diverged: the loss became", "at step", "the last finite loss was",
                          "lower --lr (now 1e+12)")
    bad_step = int(last.split("at step ")[1].split(" ")[0])
    saved = [s for s, _ in resume_mod.list_states(out)]
    assert all(s < bad_step for s in saved), (saved, bad_step)  # nothing saved past the first bad step
    assert not (out / "final.safetensors").exists() and not (out / "report.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "natural", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--method", "natural", "--monitor-steps", "0"], "--monitor-steps must be >= 1 (got 0)"),
    (["--method", "natural", "--lr", "nan"], "--lr: expected float, got nan"),
    (["--method", "natural", "--lr", "-0.1"], "--lr must be >= 0 (got -0.1)"),
    (["--method", "natural", "--eps", "-0.5"], "--eps must be >= 0"),
    (["--method", "natural", "--epochs", "0"], "must be >= 1"),
    (["--method", "kd", "--teacher", "x.pt", "--teacher-arch", "resnet7"], "unknown --teacher-arch 'resnet7'"),
    (["--method", "kd", "--teacher", "cnn_small", "--teacher-arch", "cnn_small"], "names an architecture to train"),
    (["--resume", "/nonexistent/run"], "--resume /nonexistent/run: no config.json there"),
])
def test_invalid_values(args, message, tmp_path, capsys):
    argv = [*args, "--no-progress"] if args[0] == "--resume" else ["--out", str(tmp_path / "o"), *TINY, *args]
    rc = train_mod.main(argv)
    one_line_error(capsys, rc, message)
    assert not (tmp_path / "o").exists()


def test_a_directory_holding_another_run_is_left_alone(tmp_path):
    """Through the real CLI process: exit 2, one line naming --resume, files untouched."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("keep me\n")
    r = subprocess.run([sys.executable, "-m", "rrm_fast.train", "--method", "natural", "--out", str(tmp_path), *TINY],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and f"continue it with --resume {tmp_path}" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert (tmp_path / "config.json").read_text() == "{}" and (tmp_path / "metrics.jsonl").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl"]


def test_every_cli_ends_an_interrupt_with_its_message_and_exit_code(capsys, monkeypatch):
    """run_cli (what every CLI main runs: train, eval, bench claims/compare/steps) turns the
    trainer's TrainingInterrupted into its one-line resume hint and 128 + signal, and a bare
    Ctrl-C anywhere else into "interrupted" and 130 -- no traceback."""
    import signal

    from rrm_fast.errors import run_cli

    monkeypatch.delenv("RRM_FAST_TRACEBACK", raising=False)
    monkeypatch.delenv("RANK", raising=False)

    def stopped():
        raise train_mod.TrainingInterrupted(signal.SIGTERM, "interrupted by SIGTERM; resume with X")

    assert run_cli(stopped) == 143
    assert capsys.readouterr().err.strip() == "interrupted by SIGTERM; resume with X"

    def ctrl_c():
        raise KeyboardInterrupt

    assert run_cli(ctrl_c) == 130
    assert capsys.readouterr().err.strip() == "interrupted"

    monkeypatch.setenv("RANK", "1")  # only rank 0 speaks under torchrun
    assert run_cli(stopped) == 143
    assert capsys.readouterr().err == ""


def test_claims_cli_interrupted_mid_run_prints_the_hint_not_a_traceback(tmp_path, capsys):
    """Ctrl-C during a harness run (sent while the first of three minibatches ends): the trainer
    saves its state and the claims CLI ends with the trainer's one-line hint and exit 130."""
    from helpers import SignalAtStep
    from rrm_fast.bench import claims

    argv = ["--methods", "natural", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--train-size", "300", "--monitor-size", "50", "--test-size", "50", "--epochs", "1", "--monitor-steps", "1",
            "--eval-steps", "1"]
    assert claims.main(argv, callbacks=[SignalAtStep(1)]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT at epoch 1, batch 1 (step 1)") and "--resume" in last, last
    assert resume_mod.list_states(tmp_path / "runs" / "natural")[0][0] == 1
    assert not (tmp_path / "out" / "claims.json").exists()
