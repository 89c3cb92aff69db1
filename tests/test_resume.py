"""Exact resume: runs killed (SIGKILL at random checkpoints), stopped (SIGTERM, SIGINT) or
crashed, then resumed, end with the same weights, metrics and test figures - bit for bit -
as an uninterrupted run; damaged checkpoints are detected and the previous one is used."""
import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, CrashAtSave, SignalAtStep, SimulatedCrash, child_env, same_run
from rrm_fast import resume as resume_mod
from rrm_fast.checkpoint import CheckpointError
from rrm_fast.errors import run_cli
from rrm_fast.train import TrainConfig, main, train_run

# Fast AT: FGSM random starts from the global torch RNG, the cyclic schedule, best-epoch tracking
CLI_ARGS = ["--method", "fast_at", "--student", "cnn_small", "--epochs", "2", "--train-size", "300",
            "--batch-size", "50", "--monitor-size", "100", "--monitor-steps", "1", "--eval-steps", "1", "--test-size", "100",
            "--checkpoint-every", "2", "--no-progress"]
DEADLINE_S = 400  # bound on every polling loop (a loaded 2-core machine is slow to start python)


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "rrm_fast.train", *CLI_ARGS, "--out", str(out), *extra],
                            env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def committed_steps(run_dir: Path) -> list[int]:
    return [step for step, _ in resume_mod.list_states(run_dir)]


def test_killed_and_signalled_runs_resume_bit_identical(tmp_path):
    """Five processes at once: an uninterrupted reference, three SIGKILLed as soon as a
    checkpoint at or past a random step is committed and one SIGTERMed; then the four are
    resumed (also at once) and compared with the reference bit for bit. (SIGINT is tested
    in-process below.)"""
    seed = 14  # fixed: the kill points are chosen once, the same in every run of the suite
    rng = random.Random(seed)
    # checkpoints land at steps 2, 4, 6 (end of epoch 1), 8, 10; the run has 12 steps
    targets = {f"kill{i}": rng.choice([2, 4, 6, 8]) for i in range(3)}
    targets.update(term=rng.choice([2, 4, 6]))
    sig = {"term": signal.SIGTERM}
    why = f"random seed {seed}, targets {targets}"

    ref = start(tmp_path / "ref")
    procs = {name: start(tmp_path / name) for name in targets}
    live = dict(procs)
    deadline = time.monotonic() + DEADLINE_S
    while live and time.monotonic() < deadline:
        try:  # the poll interval: waiting on a child (not sleeping), which returns at once if it dies
            next(iter(live.values())).wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
        for name, p in list(live.items()):
            assert p.poll() is None, f"{name} ended before its target checkpoint ({why}): {p.stderr.read()[-800:]}"
            steps = committed_steps(tmp_path / name)
            if steps and steps[0] >= targets[name]:
                if name in sig:
                    p.send_signal(sig[name])
                else:
                    p.kill()
                del live[name]
    assert not live, f"no checkpoint reached in {DEADLINE_S}s: {sorted(live)}"

    for name, p in procs.items():
        _, err = p.communicate(timeout=DEADLINE_S)
        if name in sig:
            assert p.returncode == 128 + sig[name], (name, p.returncode, err[-1500:])
            last = err.strip().splitlines()[-1]
            assert f"interrupted by {sig[name].name}" in last and f"--resume {tmp_path / name}" in last, err
            assert "Traceback" not in err, err
        else:
            assert p.returncode == -signal.SIGKILL, (name, p.returncode)

    resumed = {name: subprocess.Popen([sys.executable, "-m", "rrm_fast.train", "--resume", str(tmp_path / name),
                                       "--no-progress"], env=child_env(), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name in targets}
    _, ref_err = ref.communicate(timeout=DEADLINE_S)
    assert ref.returncode == 0, ref_err
    for name, p in resumed.items():
        out, err = p.communicate(timeout=DEADLINE_S)
        assert p.returncode == 0, (name, why, err[-1500:])
        assert "resume: continuing" in out, out
        same_run(tmp_path / "ref", tmp_path / name, f"{name} ({why})")
        # a kill between a commit and the pruning may leave three; the next save prunes to two
        assert len(committed_steps(tmp_path / name)) == 2


# --------------------------------------------------------------------------- in-process crashes
SMALL = dict(student="cnn_small", train_size=200, batch_size=50, monitor_size=50, monitor_steps=1, eval_steps=1,
             test_size=50, checkpoint_every=2)


def test_free_at_crash_then_resume_restores_its_delta(tmp_path):
    # Free AT carries delta across minibatches; 1 epoch of 4 batches x 2 replays, crash right
    # after the first (mid-epoch) state commits
    cfg = dict(method="free_at", epochs=2, method_options={"replays": 2}, **SMALL)
    train_run(TrainConfig(out=str(tmp_path / "ref"), **cfg), progress=False)
    with pytest.raises(SimulatedCrash):
        train_run(TrainConfig(out=str(tmp_path / "run"), **cfg), progress=False, callbacks=[CrashAtSave(1, before=False)])
    assert "delta" in json.loads(resume_mod.list_states(tmp_path / "run")[0][1].read_text())["ranks"][0]["method"]
    train_run(TrainConfig(out=str(tmp_path / "run"), **cfg), progress=False, resume=True)
    same_run(tmp_path / "ref", tmp_path / "run", "free_at")


@pytest.fixture(scope="module")
def natural_ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("natural_ref")
    train_run(TrainConfig(method="natural", epochs=1, out=str(out), **SMALL), progress=False)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_crash_between_the_metrics_row_and_the_epoch_end_state(natural_ref, tmp_path):
    """The epoch-1 row is in metrics.jsonl but its state never committed: the resumed run
    redoes the end of the epoch from the mid-epoch state without a duplicate row."""
    cfg = TrainConfig(method="natural", epochs=1, out=str(tmp_path), **SMALL)
    with pytest.raises(SimulatedCrash):  # saves: step 2 (mid-epoch), step 4 (epoch end)
        train_run(cfg, progress=False, callbacks=[CrashAtSave(2, before=True)])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert [s for s, _ in resume_mod.list_states(tmp_path)] == [2]
    train_run(cfg, progress=False, resume=True)
    same_run(natural_ref, tmp_path, "crash before the epoch-end state")


def test_ctrl_c_saves_at_the_next_step_and_exits_130(natural_ref, tmp_path, capsys):
    """Ctrl-C while the third step runs: the CLI's error path (run_cli) says where it stopped
    and how to go on, exit 130; the state is the one of that step's boundary."""
    handler_before = signal.getsignal(signal.SIGINT)
    cfg = TrainConfig(method="natural", epochs=1, out=str(tmp_path), **SMALL)
    assert run_cli(lambda: train_run(cfg, progress=False, callbacks=[SignalAtStep(3)])) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted by SIGINT at epoch 1, batch 3 (step 3)"), err
    assert f"--resume {tmp_path}" in err[-1]
    assert resume_mod.list_states(tmp_path)[0][0] == 3  # saved at that step's boundary, not later
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    assert main(["--resume", str(tmp_path), "--no-progress"]) == 0
    same_run(natural_ref, tmp_path, "after Ctrl-C")


def test_damaged_checkpoints_are_detected_and_skipped(natural_ref, tmp_path, caplog):
    # a run that crashed after the step-2 state, plus debris of a kill during the next write
    run = tmp_path / "run"
    crashed = TrainConfig(method="natural", epochs=1, out=str(run), **SMALL)
    with pytest.raises(SimulatedCrash):
        train_run(crashed, progress=False, callbacks=[CrashAtSave(1, before=False)])
    state = run / "state"
    good = sorted(state.glob("step-*.json"))
    assert [p.name for p in good] == ["step-000000002.json"]
    (state / ".step-000000004.safetensors.abc.tmp").write_bytes(b"half a file")
    (state / "step-000000004.safetensors").write_bytes(b"no sidecar: never committed")
    # a newer, committed-looking state whose tensor file is truncated
    tensors_src = state / "step-000000002.safetensors"
    (state / "step-000000003.safetensors").write_bytes(tensors_src.read_bytes()[:1000])
    meta = json.loads((state / "step-000000002.json").read_text())
    meta["step"] = 3
    meta["sidecar_sha256"] = resume_mod._sidecar_digest(meta)
    (state / "step-000000003.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="rrm_fast.train"):
        train_run(crashed, progress=False, resume=True)
    said = caplog.text
    assert "skipping a damaged checkpoint" in said and "step-000000003.safetensors fails its sha256 check" in said
    same_run(natural_ref, run, "fallback to the previous state")
    assert not list(state.glob("*.tmp"))  # debris cleaned at the next save


def test_every_damaged_state_is_an_error_and_an_edited_sidecar_is_caught(natural_ref, tmp_path):
    tmp_path = copy_run(natural_ref, tmp_path / "run")
    states = resume_mod.list_states(tmp_path)
    assert len(states) == 2
    newest, older = states[0][1], states[1][1]
    meta = json.loads(newest.read_text())
    meta["global_step"] += 1  # a plausible edit that leaves valid JSON
    newest.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="fails its own checksum"):
        resume_mod.read_state(newest)
    older.write_text(older.read_text()[:-40])  # truncated JSON
    with pytest.raises(CheckpointError, match="every training-state checkpoint .* is damaged"):
        resume_mod.load_latest_state(tmp_path, say=lambda *_: None)


def test_resume_refuses_changed_settings_and_reports_a_finished_run(natural_ref, tmp_path, capsys, caplog):
    tmp_path = copy_run(natural_ref, tmp_path / "run")
    cfg = TrainConfig(method="natural", epochs=1, out=str(tmp_path), **SMALL)
    before = (tmp_path / "final.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="rrm_fast.train"):
        assert main(["--resume", str(tmp_path), "--no-progress"]) == 0
    assert "already complete" in caplog.text
    assert (tmp_path / "final.safetensors").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(["--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    # a setting that does not change what is computed may be changed (one list: config.RESUME_MAY_CHANGE)
    assert main(["--resume", str(tmp_path), "--checkpoint-every", "7", "--loader", "device", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="was started with lr=0.05, not 0.1"):
        train_run(TrainConfig(**{**cfg.__dict__, "lr": 0.1}), progress=False, resume=True)


def test_state_round_trip_helpers():
    opt_state = {"state": {0: {"momentum_buffer": torch.arange(3.0)}, 5: {"step": torch.tensor(2.0)}},
                 "param_groups": [{"lr": 0.1, "params": [0, 5], "betas": (0.9, 0.99), "foreach": None}],
                 "scale": float("inf")}
    tensors = {}
    tree = resume_mod.split_tensors(opt_state, "optimizer", tensors)
    back = resume_mod.join_tensors(json.loads(json.dumps(tree)), tensors)
    assert set(back["state"]) == {0, 5} and torch.equal(back["state"][0]["momentum_buffer"], torch.arange(3.0))
    assert back["param_groups"][0]["betas"] == [0.9, 0.99] and back["scale"] == float("inf")
    import numpy as np
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expect = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    with resume_mod.preserved_rng(torch.device("cpu")):
        torch.rand(7), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), expect[0]) and np.random.rand() == expect[1] and random.random() == expect[2]


def test_metrics_log_appends_whole_lines_and_truncates(tmp_path):
    log = resume_mod.MetricsLog(tmp_path / "m.jsonl")
    log.reset()
    for e in range(3):
        log.append({"epoch": e + 1})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # a crash mid-write
    assert [r["epoch"] for r in log.rows()] == [1, 2, 3]
    log.truncate(2)
    assert (tmp_path / "m.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
