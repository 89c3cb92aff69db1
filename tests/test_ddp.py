"""torchrun data parallel on CPU (gloo): two processes with the global batch split between
them train the same model as one process (to float tolerance), with DistributedDataParallel
doing the gradient all-reduce; a SIGTERM to the launcher stops both ranks at the same step
with a saved state, and --resume under torchrun finishes the run."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, child_env, flags
from rrm_fast import resume as resume_mod
from rrm_fast.train import TrainConfig, train_run
# natural training of the BatchNorm-free, dropout-free cnn_small: nothing legitimately
# differs between 1 and 2 processes except float summation order
CFG = dict(method="natural", student="cnn_small", epochs=2, train_size=200, batch_size=50, monitor_size=50,
           monitor_steps=1, eval_steps=1, test_size=50, checkpoint_every=2)
DEADLINE_S = 400


def torchrun(*args):
    env = child_env()
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "rrm_fast.train", "--no-progress", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_match_one_and_resume_after_sigterm(tmp_path):
    run = tmp_path / "ddp"
    p = torchrun(*flags(**CFG), "--out", str(run))
    deadline = time.monotonic() + DEADLINE_S
    while not resume_mod.list_states(run):  # the first committed state: both ranks are training
        try:  # poll the directory; waiting on the process (not sleeping) returns at once if it dies
            p.wait(timeout=0.05)
            raise AssertionError(p.communicate()[1][-3000:])
        except subprocess.TimeoutExpired:
            pass
        assert time.monotonic() < deadline, "no checkpoint in time"
    p.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, err = p.communicate(timeout=DEADLINE_S)
    assert "interrupted by SIGTERM" in err and f"--nproc_per_node=2 -m rrm_fast.train --resume {run}" in err, err[-3000:]
    assert f'File "{REPO / "rrm_fast"}' not in err, err[-3000:]  # torchrun's own traceback only, none from ours
    stopped_at = resume_mod.list_states(run)[0][0]
    assert stopped_at < 8 and not (run / "final.safetensors").exists()

    r = torchrun("--resume", str(run))
    ref = train_run(TrainConfig(out=str(tmp_path / "one"), **CFG), progress=False)  # meanwhile, one process
    out, err = r.communicate(timeout=DEADLINE_S)
    assert r.returncode == 0, err[-3000:]
    assert f"resume: continuing {run}" in out and "x2 processes" in out, out

    a, b = load_file(str(tmp_path / "one" / "final.safetensors")), load_file(str(run / "final.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (k, (a[k] - b[k]).abs().max())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes, once per epoch
    for x, y in zip(rows, one):
        assert abs(x["loss"] - y["loss"]) < 1e-4 and x["train_acc"] == y["train_acc"], (x, y)
    report = json.loads((run / "report.json").read_text())
    assert report["world_size"] == 2 and report["test"]["n"] == 50 == ref["test"]["n"]
    assert report["test"]["clean_acc"] == ref["test"]["clean_acc"]  # clean accuracy has no randomness
    # the worst case's per-attack counts are summed over the ranks (train.check.summed_over_ranks):
    # each attack of the pair ran on every clean-correct sample of the whole set, as in one process
    ranks, one_rows = report["test"]["attacks"], ref["test"]["attacks"]
    assert [r["attack"] for r in ranks] == [r["attack"] for r in one_rows]
    assert [r["run_on"] for r in ranks] == [r["run_on"] for r in one_rows] == [round(50 * ref["test"]["clean_acc"])] * 2
    assert ranks[-1]["robust_acc_after"] == pytest.approx(report["test"]["robust_acc"])
    assert report["test"]["ce_vs_margin"]["values"]["n"] == 50
