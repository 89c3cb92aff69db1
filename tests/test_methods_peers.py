"""The peer transfer methods (KD, ARD, RSLAD, KDIGA, TRADES, CRT, Gaussian augmentation).

Each loss is checked against its formula recomputed with numpy on tiny linear models, then
each method trains end to end on a small slice of real Fashion-MNIST with one shared teacher.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from rrm_fast.methods import METHODS, ThreatModel
from rrm_fast.methods.distill import distill_kl, forward_pair, has_batchnorm, soft_kl
from rrm_fast.train import TrainConfig, main, train_run


# --------------------------------------------------------------------------- tiny models and numpy references
class Linear(nn.Module):
    """logits = W x_flat + b, recording what it was called with (input, train mode, features)."""

    def __init__(self, w, b=None, dtype=torch.float32):
        super().__init__()
        w = torch.as_tensor(np.asarray(w), dtype=dtype)
        self.fc = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(torch.zeros(w.shape[0]) if b is None else torch.as_tensor(np.asarray(b)))
        self.calls = []

    @property
    def feature_dim(self):
        return self.fc.in_features

    def forward(self, x, return_features=False):
        self.calls.append({"x": x.detach().clone(), "training": self.training, "features": return_features})
        phi = x.flatten(1)
        logits = self.fc(phi)
        return (logits, phi) if return_features else logits


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_kl(teacher_logits, student_logits, tau=1.0):
    """mean_i KL(softmax(t_i/tau) || softmax(s_i/tau))."""
    lt, ls = np_log_softmax(np.asarray(teacher_logits) / tau), np_log_softmax(np.asarray(student_logits) / tau)
    return float((np.exp(lt) * (lt - ls)).sum(1).mean())


def np_ce(logits, y):
    return float(-np_log_softmax(logits)[np.arange(len(y)), np.asarray(y)].mean())


def np_logits(model, x):
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    return x.detach().double().flatten(1).numpy() @ w.T + b


RNG = np.random.default_rng(0)
W_S = RNG.normal(size=(3, 4))        # student: 3 classes, 4 "pixels"
W_T = RNG.normal(size=(3, 4)) * 2.0  # a sharper teacher
X = torch.tensor(RNG.uniform(0.2, 0.8, size=(5, 1, 2, 2)), dtype=torch.float32)
Y = torch.tensor([0, 1, 2, 1, 0])


# --------------------------------------------------------------------------- shared helpers
def test_soft_kl_and_distill_kl_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # row 2 of t is uniform: KL(u || softmax(s)) = -log 3 - mean(log softmax(s))
    ls = np_log_softmax(s.numpy())
    row2 = -math.log(3) - ls[1].mean()
    per = soft_kl(s, t, reduction="none")
    assert per[1].item() == pytest.approx(row2, rel=1e-5)
    assert soft_kl(s, t).item() == pytest.approx(np_kl(t, s), rel=1e-5)
    assert distill_kl(s, t, 3.0).item() == pytest.approx(9.0 * np_kl(t, s, tau=3.0), rel=1e-5)
    assert soft_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="reduction"):
        soft_kl(s, t, reduction="sum")


def test_joint_forward_equals_two_forwards_and_batchnorm_is_detected():
    m = Linear(W_S)
    a, b = forward_pair(m, X, X * 0.5, joint=True)
    assert torch.allclose(a, m(X)) and torch.allclose(b, m(X * 0.5))
    assert not has_batchnorm(m)
    assert has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)))


# --------------------------------------------------------------------------- each loss against its formula
def test_kd_loss_formula():
    s, t = Linear(W_S), frozen(Linear(W_T))
    out = METHODS["kd"](s, t, kd_temp=2.0, kd_alpha=0.3).loss(X, Y)
    ls, lt = np_logits(s, X), np_logits(t, X)
    want = 0.3 * 4.0 * np_kl(lt, ls, tau=2.0) + 0.7 * np_ce(ls, Y)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert [c["features"] for c in t.calls] == [False]  # logits only, one teacher forward


def test_kd_defaults_are_the_rrm_papers_baseline():
    m = METHODS["kd"](Linear(W_S), frozen(Linear(W_T)))
    assert (m.kd_temp, m.kd_alpha) == (30.0, 1.0)
    a = METHODS["ard"](Linear(W_S), frozen(Linear(W_T)))
    assert (a.kd_temp, a.kd_alpha) == (30.0, 1.0)
    k = METHODS["kdiga"](Linear(W_S), frozen(Linear(W_T)))
    assert (k.kd_temp, k.kd_alpha, k.iga_gamma) == (1.0, 0.5, 0.5)
    assert METHODS["trades"](Linear(W_S)).trades_beta == 6.0
    c = METHODS["crt"](Linear(W_S), frozen(Linear(W_T)))
    assert (c.sigma, c.crt_alpha) == (0.25, 1.0)


THREAT = ThreatModel("Linf", eps=0.1, alpha=0.04, steps=3)


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_ard_loss_formula_on_pgd_examples(alpha):
    s, t = Linear(W_S), frozen(Linear(W_T))
    m = METHODS["ard"](s, t, THREAT, kd_temp=4.0, kd_alpha=alpha)
    torch.manual_seed(3)
    out = m.loss(X, Y)
    assert all(torch.equal(c["x"], X) for c in t.calls)  # the teacher sees the clean input
    torch.manual_seed(3)
    x_adv = m.perturb(X, Y)  # same random start -> the same example the loss used
    assert (x_adv - X).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - X).abs().max() > 0.05  # it moved
    want = alpha * 16.0 * np_kl(np_logits(t, X), np_logits(s, x_adv), tau=4.0)
    if alpha < 1:
        want += (1 - alpha) * np_ce(np_logits(s, X), Y)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)


def test_rslad_loss_formula_and_attack_protocol():
    s, t = Linear(W_S), frozen(Linear(W_T))
    s.train()
    m = METHODS["rslad"](s, t, THREAT)
    torch.manual_seed(5)
    out = m.loss(X, Y)
    # teacher: one forward, clean input, logits only
    assert len(t.calls) == 1 and torch.equal(t.calls[0]["x"], X) and not t.calls[0]["features"]
    # student: eval mode for every attack forward, train mode restored for the outer loss
    modes = [c["training"] for c in s.calls]
    assert modes[:-1] == [False] * (len(modes) - 1) and modes[-1] is True and s.training
    torch.manual_seed(5)
    x_adv = m.perturb(X, t(X).detach())
    assert (x_adv - X).abs().max() <= 0.1 + 1e-6
    lt = np_logits(t, X)
    kl_adv, kl_nat = np_kl(lt, np_logits(s, x_adv)), np_kl(lt, np_logits(s, X))
    assert out.loss.item() == pytest.approx(5 / 6 * kl_adv + 1 / 6 * kl_nat, rel=1e-5)
    assert kl_adv > kl_nat  # the inner maximisation raised KL(T(x) || S(.))


def test_rslad_start_is_x_plus_small_gaussian():
    # one step of size 0 leaves the start: x + 0.001 N(0,1), projected into ball and box
    s, t = Linear(W_S), frozen(Linear(W_T))
    m = METHODS["rslad"](s, t, ThreatModel("Linf", eps=0.1, alpha=0.0, steps=1))
    x = torch.full((2000, 1, 2, 2), 0.5)
    x_adv = m.perturb(x, t(x).detach())
    d = (x_adv - x).flatten()
    assert d.std().item() == pytest.approx(0.001, rel=0.05) and abs(d.mean().item()) < 1e-4


def test_trades_loss_formula():
    s = Linear(W_S)
    m = METHODS["trades"](s, None, THREAT, trades_beta=2.5)
    torch.manual_seed(7)
    out = m.loss(X, Y)
    torch.manual_seed(7)
    x_adv = m.perturb(X)
    ln, la = np_logits(s, X), np_logits(s, x_adv)
    assert np_kl(ln, la) > 0
    assert out.loss.item() == pytest.approx(np_ce(ln, Y) + 2.5 * np_kl(ln, la), rel=1e-5)
    # the robustness KL is differentiated through f(x) as well as f(x') (TRADES does not detach f(x))
    out.loss.backward()
    g_both = s.fc.weight.grad.clone()
    s.fc.weight.grad = None
    with torch.no_grad():
        target = s(X)
    (nn.functional.cross_entropy(s(X), Y) + 2.5 * soft_kl(s(x_adv), target)).backward()
    assert not torch.allclose(g_both, s.fc.weight.grad)


def np_input_grad_ce(w, b, x, y):
    """Per-sample grad_x CE(W x + b, y) = W^T (softmax(W x + b) - onehot(y)) for a linear model."""
    z = x @ w.T + b
    p = np.exp(np_log_softmax(z))
    p[np.arange(len(y)), y] -= 1.0
    return p @ w


def np_kdiga(ws, bs, wt, bt, x, y, alpha, tau, gamma):
    ls, lt = x @ ws.T + bs, x @ wt.T + bt
    iga = np.linalg.norm(np_input_grad_ce(ws, bs, x, y) - np_input_grad_ce(wt, bt, x, y), axis=1).mean()
    return alpha * tau * tau * np_kl(lt, ls, tau) + (1 - alpha) * np_ce(ls, y) + gamma * iga


def test_kdiga_loss_and_its_double_backprop_gradient():
    d = torch.float64
    b_s, b_t = RNG.normal(size=3), RNG.normal(size=3)
    s, t = Linear(W_S, b_s, dtype=d), frozen(Linear(W_T, b_t, dtype=d))
    x, y = X.to(d), Y.numpy()
    opts = dict(kd_temp=2.0, kd_alpha=0.3, iga_gamma=0.7)
    out = METHODS["kdiga"](s, t, **opts).loss(x, Y)
    xf = x.flatten(1).numpy()
    want = np_kdiga(W_S, b_s, W_T, b_t, xf, y, 0.3, 2.0, 0.7)
    assert out.loss.item() == pytest.approx(want, rel=1e-10)
    assert len(t.calls) == 1  # one teacher forward gives both its logits and its input gradient
    # d loss / d W_student by central differences of the numpy formula: only a double backprop
    # (create_graph=True) carries the alignment term's dependence on W into the gradient
    out.loss.backward()
    grad = s.fc.weight.grad.numpy()
    h = 1e-6
    fd = np.zeros_like(W_S)
    for i in range(W_S.shape[0]):
        for j in range(W_S.shape[1]):
            wp, wm = W_S.copy(), W_S.copy()
            wp[i, j] += h
            wm[i, j] -= h
            fd[i, j] = (np_kdiga(wp, b_s, W_T, b_t, xf, y, 0.3, 2.0, 0.7)
                        - np_kdiga(wm, b_s, W_T, b_t, xf, y, 0.3, 2.0, 0.7)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # and the alignment term alone moves the gradient (it is not a constant)
    s.fc.weight.grad = None
    METHODS["kdiga"](s, t, kd_temp=2.0, kd_alpha=0.3, iga_gamma=0.0).loss(x, Y).loss.backward()
    assert not np.allclose(s.fc.weight.grad.numpy(), grad)


def test_kdiga_refuses_a_compiled_student_in_one_line(tmp_path, capsys):
    """KDIGA declares the conflict (double backward); the trainer checks it once, before training."""
    from rrm_fast.checkpoint import save_model
    from rrm_fast.models import create_model

    teacher = save_model(tmp_path / "t.safetensors", create_model("cnn_small", 10, 1, (0.286,), (0.353,), 28))
    rc = main(["--method", "kdiga", "--teacher", str(teacher), "--compile", "--train-size", "64", "--test-size", "32",
               "--monitor-size", "32", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --method kdiga backpropagates") and "drop --compile" in err, err
    assert "\n" not in err and not (tmp_path / "o").exists()  # refused before anything was written
    assert METHODS["kdiga"](Linear(W_S), frozen(Linear(W_T)), iga_gamma=0.0).compile_conflict() is None


def test_kdiga_alignment_term_against_two_explicit_backwards():
    # a nonlinear student: per-sample gradients taken one sample at a time with two autograd calls
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    teacher = frozen(nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    out = METHODS["kdiga"](student, teacher, kd_alpha=1.0, kd_temp=1.0, iga_gamma=1.0).loss(X, Y)
    dists = []
    for i in range(len(Y)):
        xi = X[i:i + 1].clone().requires_grad_(True)
        gs, = torch.autograd.grad(nn.functional.cross_entropy(student(xi), Y[i:i + 1]), xi)
        xi = X[i:i + 1].clone().requires_grad_(True)
        gt, = torch.autograd.grad(nn.functional.cross_entropy(teacher(xi), Y[i:i + 1]), xi)
        dists.append((gs - gt).norm().item())
    kd = soft_kl(student(X), teacher(X)).item()
    assert out.loss.item() == pytest.approx(kd + np.mean(dists), rel=1e-5)
    assert out.parts["iga"].item() == pytest.approx(np.mean(dists), rel=1e-5)


def test_crt_loss_formula_and_shared_unclipped_noise():
    s, t = Linear(W_S), frozen(Linear(W_T))
    out = METHODS["crt"](s, t, sigma=0.0, crt_alpha=0.3).loss(X, Y)
    ls, lt = np_logits(s, X), np_logits(t, X)
    want = 0.3 * np.linalg.norm(ls - lt, axis=1).mean() + 0.7 * np_ce(ls, Y)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)

    s, t = Linear(W_S), frozen(Linear(W_T))
    x = torch.full((4000, 1, 2, 2), 0.5)
    METHODS["crt"](s, t, sigma=0.5).loss(x, torch.zeros(4000, dtype=torch.long))
    x_s, x_t = s.calls[0]["x"], t.calls[0]["x"]
    assert torch.equal(x_s, x_t)  # student and teacher see the same noisy input
    noise = x_s - x
    assert noise.std().item() == pytest.approx(0.5, rel=0.03)
    assert x_s.min() < 0 and x_s.max() > 1  # not clipped to [0, 1] (Cohen et al.)


def test_gaussian_aug_is_ce_on_unclipped_noisy_inputs():
    s = Linear(W_S)
    out = METHODS["gaussian_aug"](s, sigma=0.0).loss(X, Y)
    assert out.loss.item() == pytest.approx(np_ce(np_logits(s, X), Y), rel=1e-5)
    x = torch.full((4000, 1, 2, 2), 0.5)
    METHODS["gaussian_aug"](s, sigma=0.25).loss(x, torch.zeros(4000, dtype=torch.long))
    noise = s.calls[-1]["x"] - x
    assert noise.std().item() == pytest.approx(0.25, rel=0.03)
    assert s.calls[-1]["x"].min() < 0


# --------------------------------------------------------------------------- declared needs and bad input
def test_methods_declare_only_what_they_use():
    assert {n: METHODS[n].needs_teacher for n in ("kd", "ard", "rslad", "kdiga", "crt", "trades", "gaussian_aug")} == {
        "kd": True, "ard": True, "rslad": True, "kdiga": True, "crt": True, "trades": False, "gaussian_aug": False}
    for n in ("kd", "ard", "rslad", "crt"):
        assert METHODS[n].teacher_outputs == frozenset({"logits"}), n
    assert METHODS["kdiga"].teacher_outputs == frozenset({"logits", "input_grad"})
    assert {n for n in METHODS if METHODS[n].adversarial} >= {"ard", "rslad", "trades"}


@pytest.mark.parametrize("name", ["kd", "ard", "rslad", "kdiga", "crt"])
def test_teacher_methods_without_a_teacher_fail_in_one_line(name):
    with pytest.raises(ValueError, match=f"--method {name} needs a teacher") as e:
        METHODS[name](Linear(W_S), None)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,opts,flag", [("kd", {"kd_temp": 0.0}, "--kd-temp"), ("ard", {"kd_alpha": 1.5}, "--kd-alpha"),
                                            ("kdiga", {"iga_gamma": -1.0}, "--iga-gamma"),
                                            ("trades", {"trades_beta": -2.0}, "--trades-beta"),
                                            ("crt", {"sigma": -0.1}, "--sigma"), ("gaussian_aug", {"sigma": -1}, "--sigma"),
                                            ("rslad", {"rslad_adv_weight": 2.0}, "--rslad-adv-weight")])
def test_out_of_range_options_name_the_flag(name, opts, flag):
    teacher = frozen(Linear(W_T)) if METHODS[name].needs_teacher else None
    with pytest.raises(ValueError, match=flag) as e:
        METHODS[name](Linear(W_S), teacher, **opts)
    assert "\n" not in str(e.value)


def test_cli_kd_without_teacher_is_a_one_line_error(capsys):
    rc = main(["--method", "kd", "--train-size", "64", "--test-size", "32", "--no-progress", "--out", "/nonexistent/x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --method kd needs a teacher") and "\n" not in err


def test_cli_rejects_an_option_of_another_method(capsys):
    rc = main(["--method", "trades", "--kd-temp", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "takes no option(s) ['kd_temp']" in err


# --------------------------------------------------------------------------- end to end on real Fashion-MNIST
# two minibatches per epoch and two-step attacks: the point is that every piece runs on real data
SMALL = dict(student="cnn_small", epochs=1, train_size=192, test_size=64, monitor_size=64, monitor_steps=2,
             eval_steps=2, attack_steps=2, batch_size=96, teacher_epochs=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One teacher cache for the module: the first run trains the fast_at teacher, the rest reuse it."""
    old = os.environ.get("RRM_FAST_CACHE")
    path = tmp_path_factory.mktemp("peer_teachers")
    os.environ["RRM_FAST_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["RRM_FAST_CACHE"]
    else:
        os.environ["RRM_FAST_CACHE"] = old


# gaussian_aug trains end to end as the CRT chain's teacher below
@pytest.mark.parametrize("name", ["kd", "ard", "rslad", "kdiga", "trades"])
def test_each_peer_method_trains_end_to_end(name, cache, tmp_path):
    teacher = "cnn_small" if METHODS[name].needs_teacher else None
    rep = train_run(TrainConfig(method=name, teacher=teacher, out=str(tmp_path), **SMALL), progress=False)
    assert rep["method"] == name and rep["test"]["n"] == SMALL["test_size"] and rep["test"]["attack"] == "worst of APGD-CE-2, APGD-T-2x3"
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["loss"]) and row["images_per_second"] > 0
    if teacher:
        assert len(list((cache / "teachers").iterdir())) == 1  # every teacher method reuses the one teacher


def test_crt_chain_from_the_cli_with_a_gaussian_teacher(cache, tmp_path):
    # sizes from a config file (every TrainConfig key is a config key), the method's option as a flag
    config = tmp_path / "small.json"
    config.write_text(json.dumps({**SMALL, "teacher": "cnn_small", "teacher_method": "gaussian_aug"}))
    argv = ["--config", str(config), "--method", "crt", "--sigma", "0.5", "--out", str(tmp_path / "crt"), "--no-progress"]
    assert main(argv) == 0
    rep = json.loads((tmp_path / "crt" / "report.json").read_text())
    teacher_dir = os.path.dirname(rep["teacher_report"])
    teacher_cfg = json.loads(open(os.path.join(teacher_dir, "config.json")).read())
    # the teacher was trained by gaussian_aug with the student's sigma (--sigma reaches both)
    assert teacher_cfg["method"] == "gaussian_aug" and teacher_cfg["method_options"] == {"sigma": 0.5}
    assert rep["method"] == "crt" and rep["test"]["n"] == SMALL["test_size"]
    assert rep["teacher"] == "cnn_small"


def test_compare_command_writes_the_table_and_resumes(cache, tmp_path, capsys):
    from rrm_fast.bench import compare
    argv = ["--methods", "kd", "--out", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs"),
            "--attack-steps", "2", "--batch-size", "96", "--monitor-steps", "2", "--standard-size", "6",
            "--standard-queries", "10"]
    for k in ("train_size", "test_size", "monitor_size", "epochs", "teacher_epochs", "eval_steps"):
        argv += ["--" + k.replace("_", "-"), str(SMALL[k])]
    assert compare.main(argv) == 0
    res = json.loads((tmp_path / "res" / "method_comparison_fmnist.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["kd"]
    kd_report = json.loads((tmp_path / "runs" / "kd" / "report.json").read_text())
    assert res["rows"][0]["robust_acc"] == kd_report["test"]["robust_acc"]
    assert res["rows"][0]["teacher"] == "fast_at cnn_small"
    assert [t["method"] for t in res["teachers"]] == ["fast_at"]
    assert res["settings"]["train_size"] == SMALL["train_size"] and res["command"].startswith("python -m rrm_fast.bench.compare")
    md = (tmp_path / "res" / "method_comparison_fmnist.md").read_text()
    assert f"| kd | fast_at cnn_small | {100 * kd_report['test']['clean_acc']:.2f} |" in md
    # the attacks named from the reports: the trainer's honest pair, the standard suite on the first 6
    assert kd_report["test"]["attack"] == "worst of APGD-CE-2, APGD-T-2x3" and kd_report["test_standard"]["n"] == 6
    assert f"{100 * kd_report['test_standard']['robust_acc']:.2f} |" in md
    assert "| robust % (worst of APGD-CE-2, APGD-T-2x3 (Linf eps=0.1)) | standard (first 6) % |" in md
    assert res["teachers"][0]["standard"]["n"] == 6 and "**CE-only figures.**" not in md
    capsys.readouterr()
    # a second call with the same settings reuses the finished runs instead of training again
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 1
    assert json.loads((tmp_path / "res" / "method_comparison_fmnist.json").read_text())["rows"] == res["rows"]


def test_compare_rejects_unknown_methods(capsys):
    from rrm_fast.bench import compare
    assert compare.main(["--methods", "natural,bogus", "--out", "/nonexistent"]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err


def test_docs_method_table_lists_every_method_with_its_flags_and_defaults():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "methods.md")).read()
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines()
            if line.startswith("| `") and not line.startswith("| `--method`")}
    assert set(rows) == set(METHODS), set(rows) ^ set(METHODS)
    for name, cls in METHODS.items():
        for key, opt in cls.options.items():
            shown = f"{opt.default:g}" if isinstance(opt.default, (int, float)) else str(opt.default)
            assert f"`--{key.replace('_', '-')}` ({shown}" in rows[name], (name, key, shown)


def test_compare_flags_divergence_from_the_epoch_log(tmp_path):
    from rrm_fast.bench.compare import training_notes
    lines = [{"epoch": 1, "loss": 2.1}, {"epoch": 2, "loss": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    assert training_notes(tmp_path) == []
    for bad in (8.9e5, float("nan"), float("inf")):
        lines[0]["loss"] = bad
        (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
        assert training_notes(tmp_path) and "epoch-1" in training_notes(tmp_path)[0], bad
