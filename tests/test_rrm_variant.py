"""RRM's options against hand formulas: the paper's RRM with the variant off, this project's
per-image student delta (its loss, its int8 update, its crop/flip frame maps against the
loaders), fresh uniform / Gaussian noise, the clean teacher target, the norm term, the
no-teacher ablation; and the delta bank through a crash and --resume, bit for bit."""
import json

import pytest
import torch
import torch.nn as nn

from helpers import CrashAtSave, SimulatedCrash, same_run, write_image_folder
from rrm_fast import resume as resume_mod
from rrm_fast.data import ArrayDataset, dali_available, load_dataset, make_loader
from rrm_fast.data.sampling import SampleIndex
from rrm_fast.methods import METHODS, ThreatModel
from rrm_fast.methods.student_delta import LEVELS, PerImageDelta, from_view, to_view
from rrm_fast.train import TrainConfig, train_run
from rrm_fast.train.preflight import preflight

EPS = 0.1
SCALE = EPS / LEVELS


class Linear(nn.Module):
    """phi = x flattened, logits = W phi."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)
        self.calls = 0

    def forward(self, x, return_features=False):
        self.calls += 1
        phi = x.flatten(1)
        logits = self.fc(phi)
        return (logits, phi) if return_features else logits


class Constant(nn.Module):
    """A teacher whose phi is ``t`` whatever it sees."""

    def __init__(self, t):
        super().__init__()
        self.t = torch.tensor(t)

    def forward(self, x, return_features=False):
        phi = self.t.expand(x.shape[0], -1)
        logits = torch.zeros(x.shape[0], 2)
        return (logits, phi) if return_features else logits


def rrm(teacher, norm="Linf", student=None, **opts):
    return METHODS["rrm"](student or Linear(torch.eye(2)), teacher, ThreatModel(norm, EPS), **opts)


def visit(m, x, y, index):
    """One training visit without an optimizer: loss, backward, the method's after_backward."""
    out = m.loss(x, y, index=index)
    out.loss.backward()
    m.after_backward()
    return out


X = torch.tensor([[[[0.5, 0.2]]], [[[0.96, 0.0]]]])
Y = torch.tensor([0, 1])
T = (0.5, -1.0)


def rel_l2(x_in, t=T):
    t = torch.tensor(t)
    return float(((x_in.flatten(1) - t).norm(dim=1) / t.norm()).mean())


def test_defaults_are_the_variant_and_the_paper_is_two_flags_away():
    m = rrm(Constant(T))
    assert (m.student_delta, m.feature_loss, m.needs_sample_index) == ("per_image", "rel_l2", True)
    assert rrm(Constant(T), norm="L2").student_delta == "none"
    paper = rrm(Constant(T), student_delta="none", feature_loss="auto")
    assert (paper.student_delta, paper.feature_loss, paper.needs_sample_index, paper.bank) == ("none", "cosine", False, None)
    assert rrm(Constant(T), norm="L2", student_delta="none", feature_loss="auto").feature_loss == "rel_l2"
    with pytest.raises(ValueError, match="defined for --norm Linf"):
        rrm(Constant(T), norm="L2", student_delta="per_image")


def test_paper_rrm_keeps_no_state():  # its loss against RRMLoss: test_methods_core
    m = rrm(Constant(T), student_delta="none", feature_loss="auto")
    visit(m, X, Y, None)
    assert m.state_dict() == {}


def test_per_image_delta_loss_and_int8_update_by_hand():
    # rel_l2 = ||x_in - t|| / ||t|| with phi_S = x_in, so sign(dL/dx_in) = sign(x - t)
    m = rrm(Constant(T), xent_weight=0.0, delta_init="zero")
    index = SampleIndex(torch.tensor([3, 7]), dataset_size=10)
    out = visit(m, X, Y, index)
    assert out.loss.item() == pytest.approx(rel_l2(X), rel=1e-6)  # delta 0 on the first visit
    # sample 0: x - t = (0, 1.2) -> (0, +eps); sample 1: (0.46, 1.0) -> (+0.04 (box: 0.96 + d <= 1), +eps)
    expected = torch.zeros(10, 1, 2, 1, dtype=torch.int8)
    expected[3, 0, :, 0] = torch.tensor([0, 127])
    expected[7, 0, :, 0] = torch.tensor([round(0.04 / SCALE), 127])  # 51 levels
    assert torch.equal(m.bank.levels, expected)
    out = visit(m, X, Y, index)
    x_in = torch.tensor([[[[0.5, 0.2 + 127 * SCALE]]], [[[min(1.0, 0.96 + 51 * SCALE), 127 * SCALE]]]])
    assert out.loss.item() == pytest.approx(rel_l2(x_in), rel=1e-6)


def test_per_image_step_ratio_and_uniform_start():
    m = rrm(Constant(T), xent_weight=0.0, delta_init="zero", delta_step=0.25)
    visit(m, X, Y, SampleIndex(torch.tensor([0, 1]), dataset_size=2))
    assert m.bank.levels[:, 0, :, 0].tolist() == [[0, 32], [32, 32]]  # 0.25 * 127 = 31.75 -> 32 levels
    m = rrm(Linear(torch.eye(2)), xent_weight=0.0, delta_target="clean")  # teacher phi = x: rel_l2 = ||d|| / ||x||
    torch.manual_seed(5)
    out = m.loss(X, Y, index=SampleIndex(torch.tensor([1, 0]), dataset_size=4))
    torch.manual_seed(5)
    levels = torch.randint(-LEVELS, LEVELS + 1, (4, 1, 2, 1), dtype=torch.int8)
    delta = levels[[1, 0]].permute(0, 3, 1, 2).float() * SCALE
    d = (X + delta).clamp(0, 1) - X
    assert out.loss.item() == pytest.approx(float((d.flatten(1).norm(dim=1) / X.flatten(1).norm(dim=1)).mean()), rel=1e-5)


def test_fresh_uniform_and_gaussian_noise():
    for kind in ("uniform", "gaussian"):
        m = rrm(Constant(T), xent_weight=0.0, student_delta=kind)
        torch.manual_seed(2)
        out = m.loss(X, Y)
        torch.manual_seed(2)
        noise = (2 * torch.rand(X.shape) - 1) * EPS if kind == "uniform" else EPS * torch.randn(X.shape)
        assert out.loss.item() == pytest.approx(rel_l2((X + noise).clamp(0, 1)), rel=1e-6), kind


def test_norm_term_and_the_no_teacher_ablation():
    m = rrm(Constant(T), student_delta="none", feature_loss="cosine", xent_weight=0.0, norm_weight=2.0)
    t = torch.tensor(T)
    cos = torch.nn.functional.cosine_similarity(X.flatten(1), t[None], dim=1).mean()
    norm = ((X.flatten(1).norm(dim=1) / t.norm() - 1) ** 2).mean()
    assert m.loss(X, Y).loss.item() == pytest.approx(float(-cos + 2.0 * norm), rel=1e-6)
    teacher = Linear(torch.eye(2))
    m = rrm(teacher, feat_weight=0.0, xent_weight=1.0, delta_init="zero")
    out = visit(m, X, Y, SampleIndex(torch.tensor([0, 1]), dataset_size=2))
    assert out.loss.item() == pytest.approx(float(torch.nn.functional.cross_entropy(X.flatten(1), Y)), rel=1e-6)
    assert teacher.calls == 0 and set(out.parts) == {"ce"}
    assert m.bank.levels.abs().sum() > 0  # the delta still moves, by the CE's input gradient


# --------------------------------------------------------------------------- crop / flip frames
def random_images(n=24, c=2, hw=6, pad=2, flip=True):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    return ArrayDataset("random", images, torch.arange(n) % 10, 10, (0.5,) * c, (0.25,) * c, pad=pad, flip=flip)


def seen(info, b, h, w):
    """The (row, col) of the image's own frame shown at view pixel (r, c), or None: by hand."""
    p, oy, ox, fl = info.pad, int(info.offset_y[b]), int(info.offset_x[b]), bool(info.flip[b])
    out = {}
    for r in range(h):
        for c in range(w):
            row, col = oy + r - p, ox + (w - 1 - c if fl else c) - p
            if 0 <= row < h and 0 <= col < w:
                out[r, c] = (row, col)
    return out


@pytest.mark.parametrize("kind", ["device", "torch", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="DALI not installed"))])
def test_loaders_hand_over_indices_and_the_view_maps_match_them(kind):
    ds = random_images()
    loader = make_loader(kind, ds, 10, train=True, seed=3, **({"num_workers": 0} if kind == "torch" else {}))
    loader.set_epoch(1)
    loader.set_yield_index(True)
    batches = list(loader)
    assert sorted(torch.cat([i.index for _, _, i in batches]).tolist()) == list(range(len(ds)))
    own = ds.images.float() / 255
    for x, y, info in batches:
        assert torch.equal(y, ds.labels[info.index]) and info.dataset_size == len(ds) and info.augmented
        # the loader's crop and flip, reproduced (DALI scales to [0, 1] its own way: 1 ulp)
        torch.testing.assert_close(to_view(own[info.index], info), x, rtol=0, atol=1e-7 if kind == "dali" else 0)
        other = torch.full_like(own[info.index], -1.0)
        back = from_view(to_view(own[info.index], info), other, info)
        for b in range(len(y)):
            shown = seen(info, b, 6, 6)
            for r in range(6):
                for c in range(6):
                    want = own[info.index[b], :, r, c] if (r, c) in shown.values() else -1.0
                    assert torch.equal(back[b, :, r, c], torch.as_tensor(want).expand(2)), (b, r, c)


def test_a_step_in_the_cropped_frame_lands_on_the_pixels_it_showed():
    ds = random_images(n=8, c=1)
    loader = make_loader("device", ds, 8, train=True, seed=1)
    loader.set_yield_index(True)
    x, _, info = next(iter(loader))
    bank = PerImageDelta(EPS, 1.0, "zero")
    x_in = bank.perturb(x, info)
    x_in.grad = torch.ones_like(x_in)  # every pixel steps up by eps, as far as the box allows
    bank.step()
    own = ds.images.float() / 255
    for b in range(8):
        i = int(info.index[b])
        for r, c in ((r, c) for r in range(6) for c in range(6)):
            visible = (r, c) in seen(info, b, 6, 6).values()
            want = round(min(EPS, 1 - float(own[i, 0, r, c])) / SCALE) if visible else 0
            assert int(bank.levels[i, r, c, 0]) == want, (b, r, c)


# --------------------------------------------------------------------------- the trainer
SMALL = dict(method="rrm", student="cnn_wide", teacher="cnn_small", teacher_epochs=1, head_init="teacher",
             train_size=200, batch_size=50, monitor_size=50, monitor_steps=1, eval_steps=1, test_size=50,
             checkpoint_every=2, epochs=2, augment="crop+flip")


def test_crash_then_resume_with_the_delta_bank_is_bit_exact(tmp_path):
    train_run(TrainConfig(out=str(tmp_path / "ref"), **SMALL), progress=False)
    with pytest.raises(SimulatedCrash):
        train_run(TrainConfig(out=str(tmp_path / "run"), **SMALL), progress=False,
                  callbacks=[CrashAtSave(2, before=False)])  # after the 2nd state: mid-epoch 1, bank half moved
    sidecar = json.loads(resume_mod.list_states(tmp_path / "run")[0][1].read_text())
    assert set(sidecar["ranks"][0]["method"]) == {"levels"}
    tensors, _, _ = resume_mod.load_latest_state(tmp_path / "run", print)
    levels = tensors["rank0/method/levels"]
    assert levels.dtype == torch.int8 and levels.shape == (200, 28, 28, 1) and levels.abs().max() == LEVELS
    train_run(TrainConfig(out=str(tmp_path / "run"), **SMALL), progress=False, resume=True)
    same_run(tmp_path / "ref", tmp_path / "run", "rrm per-image delta with crop+flip")


def test_start_up_refuses_what_the_delta_cannot_do(tmp_path):
    fmnist = load_dataset("fashion_mnist", "train")
    with pytest.raises(ValueError, match="defined for --norm Linf"):
        preflight(TrainConfig(method="rrm", teacher="cnn_small", norm="L2", eps=1.0,
                              method_options={"student_delta": "per_image"}), fmnist)
    preflight(TrainConfig(method="rrm", teacher="cnn_small", norm="L2", eps=1.0), fmnist)  # auto: the paper's under L2

    root = write_image_folder(tmp_path / "images")
    folder = load_dataset("imagefolder", "train", str(root), resolution=32)
    common = dict(dataset="imagefolder", data_dir=str(root), resolution=32, monitor_size=4)
    with pytest.raises(ValueError, match="cannot follow a folder dataset's random-resized crops"):
        preflight(TrainConfig(method="rrm", teacher="cnn_small", student="resnet18", **common), folder)
    preflight(TrainConfig(method="rrm", teacher="cnn_small", student="resnet18", **common,
                          method_options={"student_delta": "uniform"}), folder)
    with pytest.raises(ValueError, match="--augment crop: .* folder dataset"):
        preflight(TrainConfig(method="natural", student="resnet18", augment="crop", **common), folder)


@pytest.mark.slow
def test_two_processes_keep_the_one_process_bank(tmp_path):
    """torchrun, 2 CPU processes, the global batch split between them: the same weights (to float
    tolerance) and the same delta bank as one process; ranks > 0 store no copy of it."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from helpers import REPO, child_env, flags

    teacher = train_run(TrainConfig(out=str(tmp_path / "teacher"), method="fast_at", **{
        k: v for k, v in SMALL.items() if k not in ("method", "teacher", "teacher_epochs", "head_init", "augment",
                                                    "student")}), progress=False)["checkpoint"]
    # no augmentation: the loaders draw each rank's crops from its own stream, unlike one process's
    cfg = {**SMALL, "teacher": teacher, "epochs": 1, "augment": "auto"}
    cfg.pop("teacher_epochs")
    env = child_env()
    for key in ("RANK", "WORLD_SIZE"):
        env.pop(key, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "rrm_fast.train", "--no-progress", *flags(**cfg), "--out", str(tmp_path / "two")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    train_run(TrainConfig(out=str(tmp_path / "one"), **cfg), progress=False)
    a, b = load_file(str(tmp_path / "one" / "final.safetensors")), load_file(str(tmp_path / "two" / "final.safetensors"))
    banks = [resume_mod.load_latest_state(tmp_path / run, print)[0] for run in ("one", "two")]
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())
    assert "rank1/method/levels" not in banks[1]
    one, two = banks[0]["rank0/method/levels"], banks[1]["rank0/method/levels"]
    assert (one != 0).float().mean() > 0.5 and (one == two).float().mean() > 0.999  # a zero-gradient sign may differ
