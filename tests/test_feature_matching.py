"""Feature-matching loss: the fused Triton kernel against the float64 PyTorch reference.

Two kinds of tests live here:
* ``test_kernel_*`` run the Triton kernel: on CUDA when present, and on CPU through Triton's
  interpreter. TRITON_INTERPRET=1 must be in the environment before triton is imported, so in a
  normal session ``test_kernel_tests_pass_in_the_triton_interpreter`` re-runs this file's kernel
  tests in a child ``python -m pytest`` with TRITON_INTERPRET=1 (a normal CPU session itself
  keeps using the reference path, which the other tests check).
* the rest check the reference (gradcheck), the CPU dispatch, input errors and RRMLoss.

Inputs are fresh random numbers every run; each failure message names the seed to replay it.
"""
from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rrm_fast
from rrm_fast import RRMLoss, feature_matching_loss
from rrm_fast.ops import feature_matching_backend
from rrm_fast.ops.feature_matching_reference import EPS, KINDS, feature_matching_rows_ref

REPO = Path(__file__).resolve().parents[1]
IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

SHAPES = [(b, d) for b in (1, 3, 129) for d in (1, 10, 512, 2055)] + [(3, 8193)]  # 8193: multi-chunk loop
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float64: 1e-10}


def fresh_seed() -> int:
    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    return seed


def kernel_device(name: str) -> str:
    """Skip unless the Triton kernel (not the reference) runs for tensors on `name`."""
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if feature_matching_backend("cuda") != "triton":
            pytest.skip(f"CUDA feature-matching backend is {feature_matching_backend('cuda')!r}, not the compiled kernel")
    elif feature_matching_backend("cpu") != "triton-interpreter":
        pytest.skip("CPU runs the reference here; these run in the TRITON_INTERPRET=1 child session")
    return name


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_pair(B, D, dtype, device, strided=False, teacher_grad=True):
    """Student rows s_i = a_i t_i + noise with a_i in (-2, 2), so cosines span (-1, 1)."""
    t64 = torch.randn(B, D, dtype=torch.float64)
    s64 = torch.empty(B, 1, dtype=torch.float64).uniform_(-2, 2) * t64 + torch.randn(B, D, dtype=torch.float64)
    if strided:
        # student column-major (strides (1, B)), teacher every other column (strides (2D, 2))
        s = torch.empty(D, B, dtype=dtype, device=device).t()
        s.copy_(s64)
        t = torch.empty(B, 2 * D, dtype=dtype, device=device)[:, ::2]
        t.copy_(t64)
        assert s.stride() == (1, B) and t.stride() == (2 * D, 2)
    else:
        s = s64.to(device=device, dtype=dtype)
        t = t64.to(device=device, dtype=dtype)
    return s.requires_grad_(), t.requires_grad_(teacher_grad)


def reference(s, t, kind, weights):
    """float64 per-row loss and autograd gradients of sum_i w_i l_i, on the exact input values."""
    s64 = s.detach().cpu().double().requires_grad_()
    t64 = t.detach().cpu().double().requires_grad_()
    rows = feature_matching_rows_ref(s64, t64, kind)
    (rows * weights.cpu().double()).sum().backward()
    return rows.detach(), s64.grad, t64.grad


def grad_scale(s, t):
    """Natural size of one gradient element, ~ (1/|s| + 1/|t|)/sqrt(D): a floor for relative errors
    where the exact gradient vanishes (e.g. cosine at D=1, where dl/ds = 0 identically)."""
    s64, t64 = s.detach().cpu().double(), t.detach().cpu().double()
    ns = s64.norm(dim=1).clamp_min(EPS)
    nt = t64.norm(dim=1).clamp_min(EPS)
    return ((1 / ns + 1 / nt).max() / math.sqrt(s.shape[1])).item()


def rel_err(x, ref, floor=0.0):
    x = x.detach().cpu().double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).abs().max() / max(ref.abs().max().item(), floor, 1e-300)).item()


def run_op(s, t, kind, weights):
    rows = feature_matching_loss(s, t, kind=kind, reduction="none")
    (rows * weights).sum().backward()
    return rows


# ---------------------------------------------------------------------------------------------
# kernel tests (Triton: CUDA, or CPU through the interpreter)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_float64_reference(kind, dtype, layout, device):
    device = kernel_device(device)
    seed = fresh_seed()
    tol = TOL[dtype]
    for B, D in SHAPES:
        s, t = make_pair(B, D, dtype, device, strided=layout == "strided")
        w = torch.randn(B, device=device)
        rows = run_op(s, t, kind, w)
        ref_rows, ref_ds, ref_dt = reference(s, t, kind, w)
        where = f"kind={kind} dtype={dtype} {layout} B={B} D={D} seed={seed}"
        assert rows.shape == (B,) and rows.dtype == torch.float32, where
        assert s.grad.dtype == dtype and t.grad.dtype == dtype, where
        floor = grad_scale(s, t)
        # loss floor 1e-2: the losses are O(1) quantities; an exact 0 (normalized_l2 at D=1) must
        # not turn an fp32 rounding of 1e-15 into an infinite relative error
        lerr = rel_err(rows, ref_rows, 1e-2)
        assert lerr <= tol, f"loss rel err {lerr:.3g} > {tol}: {where}"
        assert rel_err(s.grad, ref_ds, floor) <= tol, f"dS rel err {rel_err(s.grad, ref_ds, floor):.3g}: {where}"
        assert rel_err(t.grad, ref_dt, floor) <= tol, f"dT rel err {rel_err(t.grad, ref_dt, floor):.3g}: {where}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_kernel_zero_and_equal_rows(dtype, device):
    """Zero student row, zero teacher row, both zero, s == t: reference values, finite gradients."""
    device = kernel_device(device)
    seed = fresh_seed()
    B, D = 6, 37
    for kind in KINDS:
        s, t = make_pair(B, D, dtype, device)
        with torch.no_grad():
            s[0] = 0
            t[1] = 0
            s[2] = 0
            t[2] = 0
            s[3] = t[3]
        w = torch.randn(B, device=device)
        rows = run_op(s, t, kind, w)
        ref_rows, ref_ds, ref_dt = reference(s, t, kind, w)
        where = f"kind={kind} dtype={dtype} seed={seed}"
        for i in range(B):  # per row: zero rows have 1/eps-sized gradients
            floor = grad_scale(s[i : i + 1], t[i : i + 1])
            assert rel_err(rows[i], ref_rows[i], 1e-2) <= TOL[dtype], f"loss row {i}: {where}"
            assert rel_err(s.grad[i], ref_ds[i], floor) <= TOL[dtype], f"dS row {i}: {where}"
            assert rel_err(t.grad[i], ref_dt[i], floor) <= TOL[dtype], f"dT row {i}: {where}"
        if kind == "cosine":
            assert rows[0].item() == 0 and rows[2].item() == 0, where
        if kind == "rel_l2":
            assert rows[3].item() == 0 and (s.grad[3] == 0).all(), f"s == t must give loss 0, gradient 0: {where}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_kernel_reductions(reduction, device):
    device = kernel_device(device)
    seed = fresh_seed()
    for kind in KINDS:
        s, t = make_pair(7, 300, torch.float32, device)
        out = feature_matching_loss(s, t, kind=kind, reduction=reduction)
        out = out if reduction != "none" else out.sum()  # 'none' checked through its sum
        out.backward()
        s64 = s.detach().cpu().double().requires_grad_()
        t64 = t.detach().cpu().double().requires_grad_()
        ref_rows = feature_matching_rows_ref(s64, t64, kind)
        reduce = torch.mean if reduction == "mean" else torch.sum
        ref = reduce(ref_rows)
        ref.backward()
        where = f"kind={kind} reduction={reduction} seed={seed}"
        assert out.dim() == 0
        # relative to the reduction of |rows|: signed cosines may cancel in the sum
        assert rel_err(out, ref.detach(), reduce(ref_rows.abs()).item()) <= 1e-5, where
        assert rel_err(s.grad, s64.grad) <= 1e-5, where
        assert rel_err(t.grad, t64.grad) <= 1e-5, where


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_fp16_and_mixed_dtypes(device):
    """fp16 student with an fp32 teacher (as under autocast with a full-precision teacher)."""
    device = kernel_device(device)
    seed = fresh_seed()
    for kind in KINDS:
        s, t = make_pair(9, 130, torch.float16, device)
        t = t.detach().float().requires_grad_()
        w = torch.randn(9, device=device)
        rows = run_op(s, t, kind, w)
        ref_rows, ref_ds, ref_dt = reference(s, t, kind, w)
        assert s.grad.dtype == torch.float16 and t.grad.dtype == torch.float32
        floor = grad_scale(s, t)
        where = f"kind={kind} seed={seed}"
        assert rel_err(rows, ref_rows) <= 1e-5, where
        assert rel_err(s.grad, ref_ds, floor) <= TOL[torch.float16], where
        assert rel_err(t.grad, ref_dt, floor) <= 1e-5, where


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_fp16_zero_student_row_gives_finite_gradients(kind, device):
    """A zero fp16 student row: the unscaled dl/ds = t/(eps |t|) is ~1e5 per element here, past
    fp16's 65504, while the gradient of the mean loss (1/B of it) is finite. The saved gradient must
    not be rounded to fp16 before grad_output scales it (it was: inf, so GradScaler skipped every step)."""
    device = kernel_device(device)
    seed = fresh_seed()
    B, D = 256, 512
    s, t = make_pair(B, D, torch.float16, device, teacher_grad=False)
    with torch.no_grad():
        s[7] = 0
    w = torch.full((B,), 1.0 / B, device=device)  # the mean's grad_output
    rows = run_op(s, t, kind, w)
    ref_rows, ref_ds, _ = reference(s, t, kind, w)
    where = f"kind={kind} seed={seed}"
    assert torch.isfinite(s.grad).all(), f"non-finite fp16 gradient (max |ref| {ref_ds.abs().max():.3g}): {where}"
    assert rel_err(rows, ref_rows, 1e-2) <= 1e-5, where
    assert rel_err(s.grad, ref_ds) <= TOL[torch.float16], f"dS rel err {rel_err(s.grad, ref_ds):.3g}: {where}"


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_gradcheck_float64(device):
    """Numerical differentiation of the kernel path itself (fp64 inputs accumulate in fp64)."""
    device = kernel_device(device)
    fresh_seed()
    for kind in KINDS:
        s, t = make_pair(3, 5, torch.float64, device)
        assert torch.autograd.gradcheck(
            lambda a, b: feature_matching_loss(a, b, kind=kind, reduction="none"), (s, t), fast_mode=True
        ), kind


def kernel_launches(fn) -> list[str]:
    """The fused kernel's launches while ``fn`` runs, read from torch.profiler's named ranges
    (ops.feature_matching names each launch with the gradients it writes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("rrm_fast.feature_matching")]


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_forward_runs_once_and_backward_only_scales(device):
    """One fused forward launch for forward+backward; backward launches one row-scale per needed
    gradient; with a teacher that needs no gradient, dL/dT is neither computed nor stored."""
    device = kernel_device(device)
    fresh_seed()
    fwd = "rrm_fast.feature_matching_fwd[{}, write_ds={}, write_dt={}]"
    scale = "rrm_fast.feature_matching_scale_rows"

    s, t = make_pair(4, 64, torch.float32, device, teacher_grad=False)
    assert kernel_launches(lambda: feature_matching_loss(s, t).backward()) == [fwd.format("cosine", True, False), scale]
    assert t.grad is None and s.grad is not None

    s, t = make_pair(4, 64, torch.float32, device, teacher_grad=True)
    assert kernel_launches(lambda: feature_matching_loss(s, t, kind="rel_l2").backward()) == [
        fwd.format("rel_l2", True, True), scale, scale]

    with torch.no_grad():
        launches = kernel_launches(lambda: feature_matching_loss(s, t, kind="normalized_l2"))
    assert launches == [fwd.format("normalized_l2", False, False)], "no gradient may be written under no_grad"

    # what a launch writes: dL/dT is an empty tensor when the teacher needs no gradient
    _, ds, dt = torch.ops.rrm_fast.feature_matching_rows(s.detach(), t.detach(), "cosine", 1e-6, True, False)
    assert ds.shape == (4, 64) and dt.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_double_backward_raises_a_clear_error(device):
    """The saved gradient has no graph: create_graph=True must fail loudly, not return a constant."""
    device = kernel_device(device)
    fresh_seed()
    s, t = make_pair(3, 8, torch.float32, device, teacher_grad=False)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(feature_matching_loss(s, t), s, create_graph=True)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_under_torch_compile_fullgraph(device):
    device = kernel_device(device)
    seed = fresh_seed()

    def objective(s, t):
        return -0.5 * feature_matching_loss(s, t, "cosine") + feature_matching_loss(s, t, "rel_l2", "sum")

    # inductor on CUDA; on CPU aot_eager (dynamo + AOTAutograd through the op's fake and autograd
    # registrations, without minutes of C++ codegen in the interpreter session)
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    s, t = make_pair(6, 40, torch.float32, device)
    out = compiled(s, t)
    out.backward()
    gs, gt = s.grad.clone(), t.grad.clone()
    s.grad = t.grad = None
    eager = objective(s, t)
    eager.backward()
    where = f"seed={seed}"
    assert rel_err(out, eager.detach().double().cpu()) <= 1e-6, where
    assert rel_err(gs, s.grad.double().cpu()) <= 1e-6, where
    assert rel_err(gt, t.grad.double().cpu()) <= 1e-6, where


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_under_autocast(device):
    """bf16 autocast features -> fp32 loss; weight gradients match the reference path's."""
    device = kernel_device(device)
    seed = fresh_seed()
    torch.manual_seed(seed)
    student = torch.nn.Linear(48, 96).to(device)
    teacher = torch.nn.Linear(48, 96).to(device).requires_grad_(False)
    x = torch.randn(17, 48, device=device)
    for kind in KINDS:
        grads = []
        for fn in (feature_matching_loss, None):
            student.zero_grad()
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                fs, ft = student(x), teacher(x)
                assert fs.dtype == torch.bfloat16
                if fn is None:
                    loss = feature_matching_rows_ref(fs, ft, kind).mean()
                else:
                    loss = fn(fs, ft, kind=kind)
            assert loss.dtype == torch.float32
            loss.backward()
            grads.append(student.weight.grad.detach().double().cpu())
        assert rel_err(grads[0], grads[1]) <= 2e-2, f"kind={kind} seed={seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_rrm_loss_matches_its_formula(device):
    device = kernel_device(device)
    seed = fresh_seed()
    for kind, sign in (("cosine", -1.0), ("rel_l2", 1.0), ("normalized_l2", 1.0)):
        s, t = make_pair(12, 64, torch.float32, device, teacher_grad=False)
        logits = torch.randn(12, 10, device=device, requires_grad=True)
        y = torch.randint(0, 10, (12,), device=device)
        loss = RRMLoss(xent_weight=0.3, feat_weight=2.0, kind=kind)(logits, y, s, t)
        ref = 0.3 * F.cross_entropy(logits, y) + sign * 2.0 * feature_matching_rows_ref(s, t, kind).mean()
        assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), f"kind={kind} seed={seed}"


def test_kernel_tests_pass_in_the_triton_interpreter():
    """Run this file's kernel tests in a child session with TRITON_INTERPRET=1 (CPU, no GPU)."""
    if IN_INTERPRETER:
        pytest.skip("already the interpreter session")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-k", "test_kernel_ and cpu", "-q", "-x",
           "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"interpreter kernel tests failed:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    # every cpu-parametrised kernel test must actually have run (none skipped)
    assert passed and int(passed.group(1)) >= 25 and "skipped" not in proc.stdout.splitlines()[-1], tail


# ---------------------------------------------------------------------------------------------
# reference, dispatch, errors, RRMLoss (normal session)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reference_gradcheck_float64(kind, reduction):
    fresh_seed()
    s, t = make_pair(4, 7, torch.float64, "cpu")
    from rrm_fast.ops.feature_matching_reference import feature_matching_loss_ref

    assert torch.autograd.gradcheck(lambda a, b: feature_matching_loss_ref(a, b, kind, reduction), (s, t))


def test_reference_values_match_closed_forms():
    """Independent formulas: normalized_l2 = 2 - 2 cos for non-degenerate rows; rel_l2 by hand."""
    seed = fresh_seed()
    s, t = make_pair(5, 33, torch.float64, "cpu")
    s, t = s.detach(), t.detach()
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    torch.testing.assert_close(feature_matching_rows_ref(s, t, "cosine"), cos, msg=f"seed={seed}")
    torch.testing.assert_close(feature_matching_rows_ref(s, t, "normalized_l2"), 2 - 2 * cos, msg=f"seed={seed}")
    rel = ((s - t) ** 2).sum(1).sqrt() / (t**2).sum(1).sqrt()
    torch.testing.assert_close(feature_matching_rows_ref(s, t, "rel_l2"), rel, msg=f"seed={seed}")


def test_cpu_dispatch_is_the_reference_outside_the_interpreter():
    if IN_INTERPRETER:
        assert feature_matching_backend("cpu") == "triton-interpreter"
    else:
        assert feature_matching_backend("cpu") == "reference"
    assert rrm_fast.feature_matching_loss is feature_matching_loss


@pytest.mark.parametrize(
    "args, kwargs, exc, fragment",
    [
        ((torch.randn(4), torch.randn(4)), {}, ValueError, "flatten"),
        ((torch.randn(4, 3), torch.randn(4, 5)), {}, ValueError, "differ in shape"),
        ((torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64)), {}, TypeError, "floating point"),
        ((torch.randn(4, 3), torch.randn(4, 3)), {"kind": "cos"}, ValueError, "choose one of"),
        ((torch.randn(4, 3), torch.randn(4, 3)), {"reduction": "avg"}, ValueError, "choose one of"),
        ((torch.randn(0, 3), torch.randn(0, 3)), {}, ValueError, "at least one row"),
    ],
)
def test_bad_inputs_raise_one_line_errors(args, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment) as info:
        feature_matching_loss(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_rrm_loss_sign_convention_and_gradient_direction():
    """RRMLoss = xent_weight*CE -/+ feat_weight*mean term; one gradient step on the student
    features must raise their cosine with the teacher (cosine) or shrink the distance (rel_l2)."""
    seed = fresh_seed()
    with pytest.raises(ValueError, match="choose one of"):
        RRMLoss(kind="l2")
    for kind, sign in (("cosine", -1.0), ("rel_l2", 1.0), ("normalized_l2", 1.0)):
        s, t = make_pair(16, 20, torch.float32, "cpu", teacher_grad=False)
        logits = torch.randn(16, 10, requires_grad=True)
        y = torch.randint(0, 10, (16,))
        crit = RRMLoss(xent_weight=0.005, feat_weight=1.0, kind=kind)
        loss = crit(logits, y, s, t)
        ref = 0.005 * F.cross_entropy(logits, y) + sign * feature_matching_rows_ref(s, t, kind).mean()
        assert loss.dim() == 0 and abs(loss.item() - ref.item()) <= 1e-6, f"kind={kind} seed={seed}"
        loss.backward()
        before = feature_matching_rows_ref(s, t, kind).mean().item()
        after = feature_matching_rows_ref(s.detach() - 0.05 * s.grad, t, kind).mean().item()
        assert (after > before) if kind == "cosine" else (after < before), f"kind={kind} seed={seed}"
