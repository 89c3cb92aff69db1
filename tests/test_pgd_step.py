"""PGD step ops (rrm_fast.ops) against their PyTorch references.

The ground truth is the reference run in float64 on the same inputs; the compiled kernels
run in float32 and must agree to float32 rounding (the L-inf ops bit for bit with the
float32 reference). Every CPU instruction-set build of the kernels is checked, and the
same tests run on CUDA where a GPU is present. Set RRM_FAST_REQUIRE_EXT=1 (CI) to fail,
rather than skip, when the compiled extension is not built.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

from rrm_fast import _ext
from rrm_fast.ops import l2_random_init_, l2_step_, linf_random_init_, linf_step_, pgd_backend
from rrm_fast.ops.pgd_reference import l2_random_init_ref_, l2_step_ref_, linf_random_init_ref_, linf_step_ref_

CPU_EXT = _ext.extension("cpu")
if not CPU_EXT.loaded and os.environ.get("RRM_FAST_REQUIRE_EXT") == "1":
    raise RuntimeError(f"RRM_FAST_REQUIRE_EXT=1 but the compiled extension is missing: {CPU_EXT.reason}")
needs_ext = pytest.mark.skipif(not CPU_EXT.loaded, reason=f"compiled extension not built ({CPU_EXT.reason})")

CPU_ISAS = CPU_EXT.module.supported_cpu_isas() if CPU_EXT.loaded else []
CUDA = pytest.param(("cuda", None), id="cuda", marks=pytest.mark.cuda)
BACKENDS = [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in CPU_ISAS] + [CUDA]
# For what does not depend on the instruction set (op registration, compilation).
BACKENDS_BEST_ISA = [pytest.param(("cpu", "auto"), id="cpu"), CUDA]

# Awkward shapes: batch 1, odd sizes, one channel, flat features, channels != 3, 5-D.
SHAPES = [(1, 3, 5, 7), (7, 3, 11, 13), (4, 1, 6, 6), (5, 17), (3, 4, 9, 2), (2, 3, 2, 3, 5)]
GRAD_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS, ALPHA, L2_EPS, L2_ALPHA = 8 / 255, 2 / 255, 0.5, 0.125

# Float32 results against the float64 reference: a few float32 ulps of values <= ~2.
ATOL, RTOL = 2e-6, 1e-5


def seed_of(*key) -> int:
    """A fixed seed per test case, so a failure reproduces."""
    return zlib.crc32(repr(key).encode())


def _backend(request):
    device_type, isa = request.param
    if device_type == "cpu":
        previous = CPU_EXT.module.set_cpu_isa(isa)
        yield torch.device("cpu")
        CPU_EXT.module.set_cpu_isa(previous)
    else:
        if pgd_backend("cuda") != "cuda":
            pytest.fail(f"CUDA is available but the CUDA kernels are not: {_ext.extension('cuda').reason}")
        yield torch.device("cuda")


@pytest.fixture(params=BACKENDS)
def device(request):
    """A device whose compiled kernels run; on the CPU, once per instruction-set build."""
    yield from _backend(request)


@pytest.fixture(params=BACKENDS_BEST_ISA)
def op_device(request):
    """A device whose compiled kernels run, with the CPU's best instruction set."""
    yield from _backend(request)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def make_batch(shape, grad_dtype, device, seed, eps=EPS):
    """delta partly outside the eps-ball, x with exact 0s and 1s, grad with exact zeros
    (and, for N > 1, one sample whose gradient is zero everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x.view(-1)[::5] = 0.0
    x.view(-1)[1::7] = 1.0
    delta = (torch.rand(shape, generator=gen) * 2 - 1) * (1.5 * eps)
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::3] = 0.0
    if shape[0] > 1:
        grad[1] = 0.0
    return delta.to(device), grad.to(device=device, dtype=grad_dtype), x.to(device)


def per_channel(shape, device, seed):
    """Per-channel eps, alpha and box of normalised inputs: lo = (0 - mean)/std, hi = (1 - mean)/std."""
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    mean, std = torch.rand(channels, generator=gen) * 0.5 + 0.25, torch.rand(channels, generator=gen) * 0.2 + 0.2
    return dict(eps=(EPS / std).to(device), alpha=(ALPHA / std).to(device), lo=(-mean / std).to(device),
                hi=((1 - mean) / std).to(device))


def normalised_x(x, params):
    return params["lo"].reshape([1, -1] + [1] * (x.dim() - 2)) + x * (params["hi"] - params["lo"]).reshape(
        [1, -1] + [1] * (x.dim() - 2))


def some_mask(n, device, seed):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[0] = True
    if n > 1:
        mask[-1] = False
    return mask.to(device)


def reference64(ref_fn, delta, grad, x, *args, **kwargs):
    out = delta.double()
    ref_fn(out, grad, x.double(), *args, **kwargs)
    return out


def assert_close_to_reference(out, expected):
    torch.testing.assert_close(out.double(), expected.double(), atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------------
# Steps against the reference
# ---------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("channels", [False, True], ids=["scalar", "per_channel"])
def test_linf_step_matches_reference(device, shape, grad_dtype, masked, channels):
    seed = seed_of(shape, grad_dtype, masked, channels)
    delta, grad, x = make_batch(shape, grad_dtype, device, seed)
    params = per_channel(shape, device, seed) if channels else dict(eps=EPS, alpha=ALPHA, lo=0.0, hi=1.0)
    if channels:
        x = normalised_x(x, params)
    mask = some_mask(shape[0], device, seed) if masked else None

    expected64 = reference64(linf_step_ref_, delta, grad, x, **params, mask=mask)
    expected32 = linf_step_ref_(delta.clone(), grad, x, **params, mask=mask)
    out = linf_step_(delta.clone(), grad, x, **params, mask=mask)

    assert_close_to_reference(out, expected64)
    assert torch.equal(out, expected32), "L-inf step differs from the float32 reference"
    if mask is not None:
        assert torch.equal(out[~mask], delta[~mask]), "masked-out samples must keep their delta"


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("channels", [False, True], ids=["scalar", "per_channel"])
def test_l2_step_matches_reference(device, shape, grad_dtype, masked, channels):
    seed = seed_of(shape, grad_dtype, masked, channels, "l2")
    delta, grad, x = make_batch(shape, grad_dtype, device, seed, eps=L2_EPS / 8)
    box = dict(lo=0.0, hi=1.0)
    if channels:
        p = per_channel(shape, device, seed)
        box = dict(lo=p["lo"], hi=p["hi"])
        x = normalised_x(x, p)
    mask = some_mask(shape[0], device, seed) if masked else None

    expected = reference64(l2_step_ref_, delta, grad, x, L2_EPS, L2_ALPHA, **box, mask=mask)
    out = l2_step_(delta.clone(), grad, x, L2_EPS, L2_ALPHA, **box, mask=mask)

    assert_close_to_reference(out, expected)
    if mask is not None:
        assert torch.equal(out[~mask], delta[~mask]), "masked-out samples must keep their delta"


@needs_ext
def test_l2_step_projects_onto_the_ball_and_leaves_zero_gradients_alone(device):
    delta, grad, x = make_batch((6, 3, 8, 8), torch.float32, device, seed=3)
    x.fill_(0.5)  # far from the box, so only the ball constrains
    delta.mul_(50)  # norms well above eps
    grad[2] = 0.0
    out = l2_step_(delta.clone(), grad, x, 0.25, 0.0, lo=-10.0, hi=10.0)
    norms = out.flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.25 * (1 + 1e-6))
    expected = delta[2] * (0.25 / delta[2].norm())
    torch.testing.assert_close(out[2], expected, atol=1e-7, rtol=1e-6)


@needs_ext
@pytest.mark.parametrize("op", ["linf", "l2"])
def test_steps_accept_any_layout(device, op):
    """Non-contiguous grad, channels_last batches and a strided (non-dense) delta view."""
    shape = (5, 3, 9, 7)
    delta, grad, x = make_batch(shape, torch.float16, device, seed=11)
    step, ref = (linf_step_, linf_step_ref_) if op == "linf" else (l2_step_, l2_step_ref_)
    args = (EPS, ALPHA) if op == "linf" else (L2_EPS, L2_ALPHA)
    expected = reference64(ref, delta, grad, x, *args)

    grad_t = grad.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)  # same values, transposed strides
    assert not grad_t.is_contiguous()
    assert_close_to_reference(step(delta.clone(), grad_t, x, *args), expected)

    cl = torch.channels_last
    out_cl = step(delta.clone(memory_format=cl), grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl), *args)
    assert out_cl.is_contiguous(memory_format=cl)
    assert_close_to_reference(out_cl, expected)

    buffer = torch.zeros(shape[:-1] + (2 * shape[-1],), device=device)
    view = buffer[..., ::2]
    view.copy_(delta)
    step(view, grad, x, *args)
    assert_close_to_reference(view, expected)
    assert torch.all(buffer[..., 1::2] == 0), "the op wrote outside the view"


@needs_ext
def test_channels_last_with_per_channel_params(device):
    shape = (4, 3, 5, 6)
    delta, grad, x = make_batch(shape, torch.float32, device, seed=5)
    p = per_channel(shape, device, seed=5)
    x = normalised_x(x, p)
    cl = torch.channels_last
    expected = reference64(linf_step_ref_, delta, grad, x, **p)
    out = linf_step_(delta.clone(memory_format=cl), grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl), **p)
    assert_close_to_reference(out, expected)
    expected = reference64(l2_step_ref_, delta, grad, x, L2_EPS, L2_ALPHA, lo=p["lo"], hi=p["hi"])
    out = l2_step_(delta.clone(memory_format=cl), grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl),
                   L2_EPS, L2_ALPHA, lo=p["lo"], hi=p["hi"])
    assert_close_to_reference(out, expected)


@needs_ext
@pytest.mark.parametrize("threads", [1, 3])
def test_work_split_across_threads(device, threads):
    """A batch large enough to be cut into chunks mid-sample and mid-channel."""
    if device.type != "cpu":
        pytest.skip("thread split is a CPU concern")
    shape = (5, 3, 67, 67)
    delta, grad, x = make_batch(shape, torch.bfloat16, device, seed=9)
    p = per_channel(shape, device, seed=9)
    x = normalised_x(x, p)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out_linf = linf_step_(delta.clone(), grad, x, **p)
        out_l2 = l2_step_(delta.clone(), grad, x, L2_EPS, L2_ALPHA, lo=p["lo"], hi=p["hi"])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out_linf, linf_step_ref_(delta.clone(), grad, x, **p))
    assert_close_to_reference(out_l2, reference64(l2_step_ref_, delta, grad, x, L2_EPS, L2_ALPHA, lo=p["lo"], hi=p["hi"]))


@needs_ext
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES, ids=str)
def test_instruction_sets_agree_bit_for_bit(grad_dtype):
    """The CPU builds differ in vector width only: same operations, same summation order."""
    if len(CPU_ISAS) < 2:
        pytest.skip(f"this CPU runs one instruction-set build only ({CPU_ISAS})")
    shape = (6, 3, 19, 23)
    delta, grad, x = make_batch(shape, grad_dtype, "cpu", seed=31)
    p = per_channel(shape, "cpu", seed=31)
    x = normalised_x(x, p)
    outputs = {}
    previous = CPU_EXT.module.cpu_isa()
    try:
        for isa in CPU_ISAS:
            CPU_EXT.module.set_cpu_isa(isa)
            outputs[isa] = (
                linf_step_(delta.clone(), grad, x, **p),
                l2_step_(delta.clone(), grad, x, L2_EPS, L2_ALPHA, lo=p["lo"], hi=p["hi"]),
                l2_random_init_(torch.empty_like(x), x, L2_EPS, lo=p["lo"], hi=p["hi"], generator=seeded("cpu", 3)),
            )
    finally:
        CPU_EXT.module.set_cpu_isa(previous)
    first = outputs[CPU_ISAS[0]]
    for isa, results in outputs.items():
        for name, a, b in zip(("linf_step_", "l2_step_", "l2_random_init_"), first, results):
            assert torch.equal(a, b), f"{name}: {isa} differs from {CPU_ISAS[0]}"


@needs_ext
def test_nan_gradient_follows_the_reference(device):
    """torch.sign(NaN) = 0 (that L-inf coordinate does not move); an L2 step with a NaN norm does not move."""
    delta, grad, x = make_batch((3, 3, 4, 4), torch.float32, device, seed=13)
    grad[0, 0, 0, 0] = float("nan")
    out = linf_step_(delta.clone(), grad, x, EPS, ALPHA)
    expected = linf_step_ref_(delta.clone(), grad, x, EPS, ALPHA)
    torch.testing.assert_close(out, expected, equal_nan=True, atol=0, rtol=0)
    assert torch.isfinite(out).all()
    out = l2_step_(delta.clone(), grad, x, L2_EPS, L2_ALPHA)
    torch.testing.assert_close(out, reference64(l2_step_ref_, delta, grad, x, L2_EPS, L2_ALPHA).float(),
                               equal_nan=True, atol=ATOL, rtol=RTOL)


@needs_ext
def test_empty_batch(device):
    delta = torch.zeros(0, 3, 4, 4, device=device)
    for step in (linf_step_, l2_step_):
        assert step(delta, torch.zeros_like(delta), torch.zeros_like(delta), 0.1, 0.1).shape == delta.shape
    linf_random_init_(delta, torch.zeros_like(delta), 0.1)
    l2_random_init_(delta, torch.zeros_like(delta), 0.1)


# ---------------------------------------------------------------------------------------
# Random starts: same numbers as the reference under one seed
# ---------------------------------------------------------------------------------------


def seeded(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("channels", [False, True], ids=["scalar", "per_channel"])
def test_random_inits_match_reference(device, shape, channels):
    seed = seed_of(shape, channels, "init")
    _, _, x = make_batch(shape, torch.float32, device, seed)
    linf_params = dict(eps=EPS, lo=0.0, hi=1.0)
    box = dict(lo=0.0, hi=1.0)
    if channels:
        p = per_channel(shape, device, seed)
        x = normalised_x(x, p)
        linf_params = dict(eps=p["eps"], lo=p["lo"], hi=p["hi"])
        box = dict(lo=p["lo"], hi=p["hi"])

    out = linf_random_init_(torch.empty_like(x), x, **linf_params, generator=seeded(device, seed))
    expected32 = linf_random_init_ref_(torch.empty_like(x), x, **linf_params, generator=seeded(device, seed))
    expected64 = linf_random_init_ref_(torch.empty_like(x, dtype=torch.float64), x.double(), **linf_params,
                                       generator=seeded(device, seed))
    assert torch.equal(out, expected32)
    assert_close_to_reference(out, expected64)

    out = l2_random_init_(torch.empty_like(x), x, L2_EPS, **box, generator=seeded(device, seed))
    expected = l2_random_init_ref_(torch.empty_like(x, dtype=torch.float64), x.double(), L2_EPS, **box,
                                   generator=seeded(device, seed))
    assert_close_to_reference(out, expected)


@needs_ext
def test_random_inits_stay_in_the_ball_and_box(device):
    x = torch.rand(64, 3, 8, 8, device=device)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    d = linf_random_init_(torch.empty_like(x), x, EPS)
    assert d.abs().max() <= EPS and torch.all(x + d >= 0) and torch.all(x + d <= 1)
    assert d[:, 2].min() < -0.9 * EPS and d[:, 2].max() > 0.9 * EPS  # fills the ball where the box allows
    d = l2_random_init_(torch.empty_like(x), x.fill_(0.5), 0.1, lo=-1.0, hi=2.0)
    norms = d.flatten(1).norm(dim=1)
    assert norms.max() <= 0.1 * (1 + 1e-6) and norms.min() > 0.09  # radius eps*U^(1/192) is close to eps


@needs_ext
def test_random_inits_follow_torch_manual_seed(device):
    """The global seed reproduces a start (exact resume), in any memory layout."""
    x = torch.rand(4, 3, 6, 6, device=device)
    for init, eps in ((linf_random_init_, EPS), (l2_random_init_, L2_EPS)):
        torch.manual_seed(1234)
        first = init(torch.empty_like(x), x, eps)
        torch.manual_seed(1234)
        again = init(torch.empty_like(x), x, eps)
        torch.manual_seed(1234)
        channels_last = init(torch.empty_like(x, memory_format=torch.channels_last), x, eps)
        assert torch.equal(first, again)
        torch.testing.assert_close(channels_last, first, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Custom-op machinery: opcheck and torch.compile
# ---------------------------------------------------------------------------------------


def opcheck_cases(device):
    delta, grad, x = make_batch((3, 3, 5, 4), torch.float32, device, seed=21)
    mask = torch.tensor([True, False, True], device=device)
    rows4 = torch.rand(4, 3, device=device)
    rows3 = torch.rand(3, 3, device=device)
    rows2 = torch.stack([torch.zeros(3, device=device), torch.ones(3, device=device)])
    radius = torch.rand(3, device=device)
    ops = torch.ops.rrm_fast
    return [
        (ops.linf_step_.default, (delta.clone(), grad, x, None, EPS, ALPHA, 0.0, 1.0, None)),
        (ops.linf_step_.default, (delta.clone(), grad.half(), x, mask, EPS, ALPHA, 0.0, 1.0, rows4)),
        (ops.l2_step_.default, (delta.clone(), grad.bfloat16(), x, mask, L2_EPS, L2_ALPHA, 0.0, 1.0, rows2)),
        (ops.l2_step_.default, (delta.clone(), grad, x, None, L2_EPS, L2_ALPHA, 0.0, 1.0, None)),
        (ops.linf_init_from_uniform_.default, (torch.rand_like(x), x, EPS, 0.0, 1.0, rows3)),
        (ops.l2_init_from_normal_.default, (torch.randn_like(x), x, radius, L2_EPS, 0.0, 1.0, None)),
    ]


@needs_ext
def test_opcheck(op_device):
    for op, args in opcheck_cases(op_device):
        torch.library.opcheck(op, args)


def two_steps(delta, grad, x, mask):
    linf_step_(delta, grad, x, EPS, ALPHA, mask=mask)
    l2_step_(delta, grad, x, L2_EPS, L2_ALPHA)
    return delta


@needs_ext
@pytest.mark.parametrize("backend, dynamic", [("aot_eager", False), ("aot_eager", True), ("inductor", False)])
def test_torch_compile(op_device, backend, dynamic):
    """A PGD inner loop compiled with fullgraph=True (no graph break) matches eager."""
    torch._dynamo.reset()
    compiled = torch.compile(two_steps, fullgraph=True, backend=backend, dynamic=dynamic)
    for n in (4, 5) if dynamic else (4,):
        delta, grad, x = make_batch((n, 3, 8, 8), torch.float16, op_device, seed=17 + n)
        mask = some_mask(n, op_device, seed=17)
        out = compiled(delta.clone(), grad, x, mask)
        assert torch.equal(out, two_steps(delta.clone(), grad, x, mask))


COMPILE_FIRST_SCRIPT = textwrap.dedent(
    """
    import torch
    from rrm_fast.ops import linf_step_

    def step(d, g, x):
        return linf_step_(d, g, x, 0.03, 0.01)

    d, g, x = torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    torch.compile(step, fullgraph=True, backend="aot_eager")(d, g, x)
    print("ok")
    """
)


@needs_ext
def test_torch_compile_as_the_first_call():
    """fullgraph compiles even when the op's first call ever is inside torch.compile."""
    result = subprocess.run([sys.executable, "-c", COMPILE_FIRST_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# Bad input: one clear line naming the problem and the fix
# ---------------------------------------------------------------------------------------


def _bad_calls():
    d, g, x = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    return [
        (lambda: linf_step_(d.double(), g, x.double(), EPS, ALPHA), TypeError, "delta must be a float32"),
        (lambda: linf_step_(d[0, 0, 0], g[0, 0, 0], x[0, 0, 0], EPS, ALPHA), ValueError, "add the batch dimension"),
        (lambda: linf_step_(d, g, x[:1], EPS, ALPHA), ValueError, "x must have the shape of delta"),
        (lambda: linf_step_(d, g, x.half(), EPS, ALPHA), TypeError, "pass x.float()"),
        (lambda: linf_step_(d, g[:, :2], x, EPS, ALPHA), ValueError, "grad must have the shape of delta"),
        (lambda: linf_step_(d, g.double(), x, EPS, ALPHA), TypeError, "pass grad.float()"),
        (lambda: linf_step_(d, g, x, EPS, ALPHA, mask=torch.ones(3, dtype=torch.bool)), ValueError, "one bool per sample"),
        (lambda: linf_step_(d, g, x, torch.ones(2), ALPHA), ValueError, "eps has 2 values but delta has 3 channels"),
        (lambda: linf_step_(d, g, x, -0.1, ALPHA), ValueError, "eps must be >= 0"),
        (lambda: linf_step_(d, g, x, EPS, ALPHA, lo=1.0, hi=0.0), ValueError, "lo <= hi"),
        (lambda: linf_step_(d, g, x, "8/255", ALPHA), TypeError, "eps must be a number or a tensor"),
        (lambda: l2_step_(d, g, x, torch.ones(3), ALPHA), ValueError, "eps must be a scalar"),
        (lambda: l2_random_init_(d, x, torch.ones(3)), ValueError, "eps must be a scalar"),
        (lambda: linf_step_(d.requires_grad_(), g, x, EPS, ALPHA), RuntimeError, "torch.no_grad()"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_is_named(index):
    call, error, message = _bad_calls()[index]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@needs_ext
def test_direct_op_calls_check_their_arguments():
    d, g, x = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    ops = torch.ops.rrm_fast
    cases = [
        (lambda: ops.linf_step_(d[..., ::2], g[..., ::2], x[..., ::2], None, EPS, ALPHA, 0.0, 1.0, None),
         "delta must be contiguous or channels_last"),
        (lambda: ops.linf_step_(d, g.transpose(2, 3), x, None, EPS, ALPHA, 0.0, 1.0, None),
         "grad must have the memory layout of delta"),
        (lambda: ops.linf_step_(d, g, x, None, EPS, ALPHA, 0.0, 1.0, torch.zeros(4, 2)),
         r"channel parameters must be a float32 tensor of shape \(4, 3\)"),
        (lambda: ops.l2_step_(d, g, x, torch.ones(2), EPS, ALPHA, 0.0, 1.0, None), "mask must be bool"),
        (lambda: ops.l2_init_from_normal_(d, x, torch.ones(3), EPS, 0.0, 1.0, None), r"radius must be float32 of shape \(2,\)"),
        (lambda: ops.l2_step_(d, d, x, None, EPS, ALPHA, 0.0, 1.0, None), "unsupported operation"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


# ---------------------------------------------------------------------------------------
# Backend report and the fallback without the extension
# ---------------------------------------------------------------------------------------


@needs_ext
def test_backend_names():
    assert pgd_backend("cpu") == "cpp"
    assert pgd_backend(torch.device("cpu")) == "cpp"
    assert _ext.cpu_isa() in CPU_ISAS
    assert pgd_backend("cuda") == ("cuda" if _ext.extension("cuda").loaded else "reference")


def test_info_reports_the_backends():
    from rrm_fast import info

    rows = dict(info.report())
    assert rows["pgd step ops (cpu)"] == pgd_backend("cpu")
    assert rows["pgd step ops (cuda)"] == pgd_backend("cuda")
    assert rows["extension"].startswith("rrm_fast._C: ")
    assert torch.__version__ in rows["torch"]
    if CPU_EXT.loaded:
        assert f"rrm_fast kernels: {CPU_EXT.module.cpu_isa()}" in rows["cpu capability"]


def test_unknown_cpu_isa_is_refused():
    if not CPU_EXT.loaded:
        pytest.skip("compiled extension not built")
    with pytest.raises(ValueError, match="not available here"):
        CPU_EXT.module.set_cpu_isa("sse9")


ISA_SCRIPT = textwrap.dedent(
    """
    import torch
    from rrm_fast import _ext
    module = _ext.extension("cpu").module
    d = torch.zeros(2, 3, 4, 4)
    try:
        torch.ops.rrm_fast.linf_step_(d, d.clone(), d.clone(), None, 0.1, 0.1, 0.0, 1.0, None)
        print("isa", module.cpu_isa())
    except RuntimeError as err:
        print("error", str(err).splitlines()[0])
    """
)


@pytest.mark.parametrize("requested", ["default", "sse9"])
def test_cpu_isa_environment_switch(requested):
    """RRM_FAST_CPU_ISA picks the CPU build; an unknown one fails with a message naming the fix."""
    if not CPU_EXT.loaded:
        pytest.skip("compiled extension not built")
    env = dict(os.environ, RRM_FAST_CPU_ISA=requested)
    result = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if requested == "default":
        assert result.stdout.split() == ["isa", "default"]
    else:
        assert "RRM_FAST_CPU_ISA=sse9 is not available" in result.stdout
        assert "use auto, default, avx2 or avx512" in result.stdout


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import warnings
    import torch
    from rrm_fast.ops import linf_step_, l2_step_, linf_random_init_, l2_random_init_, pgd_backend
    from rrm_fast.ops.pgd_reference import linf_step_ref_, l2_step_ref_

    assert pgd_backend("cpu") == "reference", pgd_backend("cpu")
    x = torch.rand(3, 3, 5, 5); g = torch.randn(3, 3, 5, 5); d = torch.zeros(3, 3, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            linf_random_init_(d, x, 0.03)
            l2_random_init_(d, x, 0.5)
            before = d.clone()
            linf_step_(d, g, x, 0.03, 0.01)
            assert torch.equal(d, linf_step_ref_(before, g, x, 0.03, 0.01))
            before = d.clone()
            l2_step_(d, g, x, 0.5, 0.1)
            assert torch.equal(d, l2_step_ref_(before, g, x, 0.5, 0.1))
    ours = [w for w in caught if "rrm_fast" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "RRM_FAST_DISABLE_EXT=1" in str(ours[0].message), ours[0].message
    assert "pip install --no-build-isolation -e ." in str(ours[0].message), ours[0].message
    print("ok")
    """
)


def test_fallback_without_extension_warns_exactly_once():
    env = dict(os.environ, RRM_FAST_DISABLE_EXT="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
