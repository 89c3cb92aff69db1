"""Evaluation suites, randomized-smoothing certification and gradient-masking diagnostics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import beta, binom, norm

from rrm_fast import eval as ev
from rrm_fast.checkpoint import load_model, save_model
from rrm_fast.data import load_dataset
from rrm_fast.eval import gradient_masking_checks
from rrm_fast.models import create_model
from rrm_fast.smoothing import ABSTAIN, Smooth, clopper_pearson_lower, max_certifiable_radius, summarize_certification
from helpers import QuantisedInput, TinyCNN, fmnist, noise_trained_checkpoint, one_thread, trained_cnn


@pytest.fixture(scope="module")
def threads():
    with one_thread():
        yield


# ---- the test models themselves ----------------------------------------------------------
def test_tiny_cnn_learns_fashion_mnist(threads):
    model = trained_cnn()
    x, y = fmnist("test", 500)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.75, acc


@pytest.mark.parametrize("level", [0.0, 0.3, 0.9])
def test_quantised_input_has_no_input_gradient(level):
    torch.manual_seed(0)
    model = QuantisedInput(TinyCNN())
    x = torch.full((2, 1, 28, 28), level, requires_grad=True)
    model(x).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


# ---- Clopper-Pearson and CERTIFY --------------------------------------------------------
def test_clopper_pearson_lower_bound():
    lower = clopper_pearson_lower(90, 100, 0.001)
    assert lower == pytest.approx(beta.ppf(0.001, 90, 100 - 90 + 1), rel=1e-12)
    assert lower == pytest.approx(0.77533, abs=1e-5)  # tabulated (scipy 1.17)
    # the definition: at p = lower bound, seeing >= 90 successes has probability exactly alpha
    assert binom.sf(89, 100, lower) == pytest.approx(0.001, rel=1e-6)
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    with pytest.raises(ValueError, match="k=101"):
        clopper_pearson_lower(101, 100, 0.001)


class Constant(nn.Module):
    def __init__(self, cls, num_classes=10):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        return F.one_hot(torch.full((x.shape[0],), self.cls), self.num_classes).float()


class Coin(nn.Module):
    """Predicts uniformly at random: the smoothed classifier has no majority class."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.rand(x.shape[0], self.num_classes, generator=self.gen)


def test_certify_radius_and_abstention():
    x = torch.rand(1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    cls, radius = Smooth(Constant(3), 10, 0.25).certify(x, 10, 200, 0.001, batch_size=64, generator=gen)
    # all 200 votes agree: pA_lower = alpha^(1/n), radius = sigma * Phi^-1(pA_lower)
    assert cls == 3 and radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 200)))
    assert radius == pytest.approx(max_certifiable_radius(0.25, 200, 0.001))
    assert Smooth(Constant(3), 10, 0.25).predict(x, 50, 0.001, generator=gen) == 3
    for k in (2, 10):  # no majority: CERTIFY and PREDICT abstain
        assert Smooth(Coin(k), k, 0.25).certify(x, 10, 200, 0.001, generator=gen) == (ABSTAIN, 0.0)
        assert Smooth(Coin(k), k, 0.25).predict(x, 200, 0.001, generator=gen) == ABSTAIN
    s = summarize_certification([1, 2, 3, 4], [1, 2, ABSTAIN, 0], [0.3, 0.6, 0.0, 0.9], radii=(0.0, 0.5, 1.0))
    assert s["certified_acc"] == {"0": 0.5, "0.5": 0.25, "1": 0.0}
    assert s["acr"] == pytest.approx((0.3 + 0.6) / 4) and s["abstain_rate"] == 0.25


def test_noise_trained_model_certifies_larger_radii_than_a_natural_one(threads):
    # sigma 0.5: enough noise that a naturally trained CNN's smoothed votes break down, while
    # the same CNN trained with that noise keeps them (16 images, n = 200: CPU-sized)
    x, y = fmnist("test", 16)
    results = {}
    for sigma_train, steps in ((0.0, 400), (0.5, 200)):
        smooth = Smooth(trained_cnn(noise_sigma=sigma_train, steps=steps), 10, 0.5)
        preds, rads = [], []
        for i in range(x.shape[0]):
            gen = torch.Generator().manual_seed(i)
            p, r = smooth.certify(x[i], 20, 200, 0.001, batch_size=220, generator=gen)
            preds.append(p)
            rads.append(r)
        assert max(rads) <= max_certifiable_radius(0.5, 200, 0.001) + 1e-9
        results[sigma_train] = summarize_certification(y.tolist(), preds, rads)
    noisy = results[0.5]
    accs = list(noisy["certified_acc"].values())
    assert accs == sorted(accs, reverse=True)  # certified accuracy cannot grow with the radius
    assert noisy["certified_acc"]["0"] >= 0.6 and noisy["acr"] > 0.35, noisy
    assert noisy["acr"] > 1.3 * results[0.0]["acr"], results


# ---- gradient-masking diagnostics --------------------------------------------------------
def test_diagnostics_fire_on_a_masked_model_and_stay_quiet_on_a_normal_one(threads):
    model = trained_cnn()
    x, y = fmnist("test", 200)
    kw = dict(eps=0.03, steps=10, batch_size=200, square_queries=200)
    normal = gradient_masking_checks(model, x, y, **kw)
    masked = gradient_masking_checks(QuantisedInput(model), x, y, **kw)
    assert normal["warnings"] == [], normal["warnings"]
    fired = {c["name"] for c in masked["checks"] if not c["ok"]}
    assert {"zero_gradients", "black_box", "large_eps"} <= fired, masked["checks"]
    bb = next(c for c in masked["checks"] if c["name"] == "black_box")["values"]
    assert bb["fooled"] > 0 and bb["run_on"] > 0
    assert any("Square" in w for w in masked["warnings"])


# ---- the CLI -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_ckpt(tmp_path_factory):
    with one_thread():
        return noise_trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "final.safetensors")


def run_cli(capsys, *args):
    with one_thread():
        rc = ev.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_quick_suite_reproduces_evaluate_robustness(zoo_ckpt, tmp_path, capsys):
    out = tmp_path / "q.json"
    rc, stdout, err = run_cli(capsys, zoo_ckpt, "--test-size", 100, "--steps", 5, "--diag-size", 40,
                              "--diag-queries", 40, "--batch-size", 50, "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    model, _ = load_model(zoo_ckpt)
    model = model.to(memory_format=torch.channels_last)  # the CLI's default, as the trainer's
    ds = load_dataset("fashion_mnist", "test").subset(torch.arange(100))
    with one_thread():
        direct = ev.evaluate_robustness(model, ds, eps=0.03, steps=5, batch_size=50, channels_last=True)
    assert res["robust_acc"] == direct["robust_acc"] and res["clean_acc"] == direct["clean_acc"]
    assert res["robust_acc"] < res["clean_acc"]
    assert "worst case" in stdout and "gradient-masking diagnostics" in stdout
    assert len(res["diagnostics"]["checks"]) == 6 and not out.with_name("q.partial.json").exists()


def test_worst_case_suite_prints_each_attack_alone_and_the_time_split(zoo_ckpt, tmp_path, capsys):
    out = tmp_path / "w.json"
    rc, stdout, err = run_cli(capsys, zoo_ckpt, "--suite", "worst-case", "--attacks", "pgd-ce+dlr", "--steps", 5,
                              "--test-size", 60, "--diag-size", 30, "--diag-queries", 20, "--batch-size", 30,
                              "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["attack"] == "worst of PGD-5-CE, PGD-5-DLR" and res["attack_set"] == "pgd-ce+dlr"
    ce, dlr = res["attacks"]
    assert res["robust_acc"] <= min(ce["robust_acc_alone"], dlr["robust_acc_alone"])
    assert set(res["ce_vs_margin"]["values"]) == {"PGD-5-CE", "PGD-5-DLR", "n", "gap_points"}
    assert res["warnings"] == ([] if res["ce_vs_margin"]["ok"] else [res["ce_vs_margin"]["message"]])
    assert "time: PGD-5-CE" in stdout and "(worst of PGD-5-CE, PGD-5-DLR)" in stdout
    assert "ce_vs_margin" in {c["name"] for c in res["diagnostics"]["checks"]}


def test_standard_suite_is_a_per_sample_worst_case(zoo_ckpt, tmp_path, capsys):
    out = tmp_path / "s.json"
    args = (zoo_ckpt, "--suite", "standard", "--test-size", 60, "--steps", 10, "--n-targets", 2, "--n-queries", 40,
            "--diag-size", 30, "--diag-steps", 5, "--batch-size", 30, "--out", out)
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    res = json.loads(out.read_text())
    names = [a["attack"] for a in res["attacks"]]
    assert names == ["APGD-CE-10", "APGD-T-10x2", "Square-40"]
    after = [a["robust_acc_after"] for a in res["attacks"]]
    assert after == sorted(after, reverse=True) and res["robust_acc"] == after[-1] <= res["clean_acc"]
    assert res["attacks"][1]["run_on"] == round(after[0] * 60)  # each attack runs only on the survivors
    assert all(a["max_perturbation"] <= 0.03 + 1e-5 for a in res["attacks"])
    bb = next(c for c in res["diagnostics"]["checks"] if c["name"] == "black_box")
    assert bb["values"]["attack"] == "Square-40" and bb["values"]["run_on"] == res["attacks"][2]["run_on"]
    for row in ("APGD-CE-10", "APGD-T-10x2", "Square-40", "worst case", "[ok]"):
        assert row in stdout


class InterruptedProgress(ev.ProgressFile):
    """A Ctrl-C while batch number ``stop`` is running: the batches before it are saved."""

    def __init__(self, *args, stop, **kw):
        super().__init__(*args, **kw)
        self.stop, self.saved = stop, 0

    def put(self, key, record):
        if self.saved + 1 == self.stop:
            raise KeyboardInterrupt
        super().put(key, record)
        self.saved += 1


class CountingProgress(ev.ProgressFile):
    """Records the batches that had to be computed (no saved record)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.computed = []

    def get(self, key):
        rec = super().get(key)
        if rec is None:
            self.computed.append(int(key))
        return rec


def _without_seconds(res):
    res = {k: v for k, v in res.items() if k not in ("seconds", "robust_mask")}
    if "attacks" in res:
        res["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in res["attacks"]]
    return res


@pytest.mark.parametrize("suite", ["quick", "standard"])
def test_an_interrupted_suite_resumes_with_identical_results(zoo_ckpt, tmp_path, suite):
    model, _ = load_model(zoo_ckpt)
    ds = load_dataset("fashion_mnist", "test").subset(torch.arange(60))
    if suite == "quick":
        run = lambda **kw: ev.evaluate_robustness(model, ds, eps=0.03, steps=5, batch_size=20, per_sample=True, **kw)
    else:
        run = lambda **kw: ev.evaluate_standard(model, ds, eps=0.03, steps=5, n_targets=2, n_queries=20,
                                                batch_size=20, **kw)
    settings, path = {"suite": suite, "eps": 0.03}, tmp_path / "p.partial.json"
    with one_thread():
        full = run()
        with pytest.raises(KeyboardInterrupt):
            run(progress_file=InterruptedProgress(path, settings, resume=False, stop=2))
        assert list(json.loads(path.read_text())["records"]) == ["0"]
        with pytest.raises(ValueError, match=r"different settings \(eps\)"):
            ev.ProgressFile(path, {**settings, "eps": 0.05}, resume=True)
        pf = CountingProgress(path, settings, resume=True)
        resumed = run(progress_file=pf)
    assert pf.computed == [20, 40]  # batch 0 came from the file
    assert _without_seconds(resumed) == _without_seconds(full)
    assert torch.equal(resumed["robust_mask"], full["robust_mask"])
    assert 0 < full["robust_acc"] < full["clean_acc"]  # the attack fooled some samples, not all


def test_ctrl_c_names_the_partial_file_and_resume_finishes_the_run(zoo_ckpt, tmp_path, capsys):
    """A real SIGINT to the CLI process: exit 130, one line naming the partial file and --resume;
    the finished batches are kept, and --resume finishes only the rest."""
    import signal
    out, partial = tmp_path / "r.json", tmp_path / "r.partial.json"
    args = [zoo_ckpt, "--suite", "standard", "--test-size", 80, "--steps", 5, "--n-targets", 1, "--n-queries", 100,
            "--diag-size", 0, "--batch-size", 10, "--out", out]
    # The CLI as `python -m rrm_fast.eval` runs it, except that after its first batch record it
    # says so on stdout and waits for a signal: the interrupt lands there, with 7 batches left,
    # however fast or loaded the machine (racing a poll against real batches flaked both ways).
    code = ("import signal, sys\n"
            "from rrm_fast.eval import progress\n"
            "put = progress.ProgressFile.put\n"
            "def put_then_wait(self, key, record):\n"
            "    put(self, key, record)\n"
            "    print('batch recorded', flush=True)\n"
            "    signal.pause()\n"
            "progress.ProgressFile.put = put_then_wait\n"
            "from rrm_fast.eval.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    # SIG_DFL for SIGINT in the child, as a foreground command gets: a shell starts background jobs
    # (`.ci/run &`, nohup) with SIGINT ignored, which Python then keeps, and the interrupt never lands
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    while line and line.strip() != "batch recorded":  # the estimate comes first; EOF: it ended without one
        line = proc.stdout.readline()
    assert line, "the run ended before its first batch record"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert "r.partial.json" in err and "--resume" in err and not out.exists()
    done = len(json.loads(partial.read_text())["records"])
    assert done == 1
    rc, stdout, err = run_cli(capsys, *args, "--resume", "--eps", 0.05)  # other settings: refused, one line
    assert rc == 2 and "different settings (eps)" in err and len(err.strip().splitlines()) == 1
    rc, stdout, err = run_cli(capsys, *args, "--resume")
    assert rc == 0, err
    assert f"resuming: {done} batch(es)" in stdout and not partial.exists()
    assert json.loads(out.read_text())["n"] == 80


def test_certify_suite_prints_certified_accuracy_per_radius(zoo_ckpt, tmp_path, capsys):
    out = tmp_path / "c.json"
    rc, stdout, err = run_cli(capsys, zoo_ckpt, "--suite", "certify", "--n0", 10, "--n", 100, "--test-size", 6,
                              "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["sigma"] == 0.25  # read from the checkpoint's training config
    assert list(res["certified_acc"]) == ["0", "0.25", "0.5", "0.75", "1"]
    assert res["max_certifiable_radius"] == pytest.approx(max_certifiable_radius(0.25, 100, 0.001))
    assert "ACR" in stdout and "above the largest certifiable radius" in stdout


@pytest.mark.parametrize("extra, message", [
    (["--n-queries", "0"], "--n-queries must be >= 1"),
    (["--suite", "certify", "--sigma", "-1"], "--sigma must be > 0"),
    (["--radii", "0,a"], "--radii must be comma-separated numbers"),
])
def test_bad_flags_give_one_line_errors(zoo_ckpt, capsys, extra, message):
    rc, _, err = run_cli(capsys, zoo_ckpt, *extra)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_certify_needs_a_sigma_for_models_not_trained_with_noise(zoo_ckpt, tmp_path, capsys):
    model, meta = load_model(zoo_ckpt)
    path = tmp_path / "nat.safetensors"
    save_model(path, model, {"config": {"dataset": "fashion_mnist", "eps": 0.03, "method": "natural"}})
    rc, _, err = run_cli(capsys, path, "--suite", "certify")
    assert rc == 2 and "--sigma is required" in err


def test_attack_amp_runs_the_attacks_under_autocast_and_judges_in_fp32(zoo_ckpt):
    model, _ = load_model(zoo_ckpt)
    ds = load_dataset("fashion_mnist", "test").subset(torch.arange(100))
    wrapped = ev.AutocastModel(model, "cpu")
    assert wrapped.dtype == torch.bfloat16
    with one_thread():
        fp32 = ev.evaluate_robustness(model, ds, eps=0.03, steps=5, batch_size=50)
        amp = ev.evaluate_robustness(model, ds, eps=0.03, steps=5, batch_size=50, attack_amp=True)
        logits = wrapped(ds.images[:4].float() / 255)
    assert logits.dtype == torch.float32
    assert amp["clean_acc"] == fp32["clean_acc"]  # clean predictions are never autocast
    assert abs(amp["robust_acc"] - fp32["robust_acc"]) <= 0.05, (amp, fp32)


def test_folder_datasets_are_evaluated_through_the_loader(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from rrm_fast.data.imagefolder import FolderDataset
    gen = torch.Generator().manual_seed(0)
    for label in range(3):
        folder = tmp_path / "val" / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(4):
            colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=gen))
            Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
    ds = load_dataset("imagefolder", "test", str(tmp_path), resolution=16)
    assert isinstance(ds, FolderDataset) and len(ds) == 12
    torch.manual_seed(0)
    model = create_model("cnn_small", 3, 3, (0.5,) * 3, (0.5,) * 3, image_size=16).eval()
    x, y = ev.first_samples(ds, 12, "cpu", batch_size=5)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    with one_thread():
        res = ev.evaluate_robustness(model, ds, eps=0.03, steps=3, batch_size=5)
    assert res["n"] == 12 and res["clean_acc"] == pytest.approx(clean) and res["robust_acc"] <= res["clean_acc"]
    assert sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
