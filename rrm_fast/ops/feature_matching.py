"""Feature-matching loss: dispatch between the fused Triton kernel and the PyTorch reference.

Layer 2 of three (kernel in kernels/feature_matching.py -> this custom op with autograd ->
``rrm_fast.feature_matching_loss`` / ``rrm_fast.RRMLoss``).

* CUDA tensors run the fused kernel. Its forward writes the loss of every row and the gradient
  of that row's loss (dL/dS, and dL/dT when the teacher needs one); those gradients are saved,
  and backward only scales them by grad_output (one light kernel), never re-reading S and T.
  Eagerly this runs as a torch.autograd.Function (least Python per call); inside a
  ``torch.compile`` graph it runs as the torch.library custom ops
  ``rrm_fast::feature_matching_rows`` / ``rrm_fast::feature_matching_scale_rows`` (fake impls
  + register_autograd), which dynamo, AOTAutograd and inductor treat as opaque nodes. Autocast
  passes both through untouched: the kernel takes fp32/fp16/bf16/fp64 inputs, mixed if need be,
  and accumulates in fp32 (fp64 for fp64). Second derivatives are not supported: backward with
  create_graph=True raises (eager), or the scale op has no autograd formula (compiled).
* CPU tensors run the plain PyTorch reference (feature_matching_reference.py) unless
  ``TRITON_INTERPRET=1`` was in the environment when the kernel module was first imported, in
  which case they run the same Triton kernel in Triton's interpreter (that is how CI tests it).

Stored gradient dtype: the input's own dtype for fp32, bf16 and fp64; fp32 for fp16. In bf16 that
halves the bytes the forward writes and the memory kept alive until backward (the dominant costs
of a memory-bound op); the rounding it adds (one bf16 rounding of each gradient element, before the
fp32 scaling) is the same rounding eager autograd applies when it hands a bf16 leaf its gradient,
so accuracy stays within bf16's own ~4e-3 relative step. fp16 cannot hold the unscaled gradient:
a zero student row's t/(eps |t|) is ~1e6/sqrt(D) per element, past fp16's 65504, so it is stored
in fp32 and rounded to fp16 only after scaling by grad_output (as eager autograd does).
"""
from __future__ import annotations

import contextlib
import os

import torch

from .feature_matching_reference import EPS, KINDS, feature_matching_loss_ref, reduce_rows

REDUCTIONS = ("mean", "sum", "none")

_kernels = None
_kernels_error: Exception | None = None


def _load_kernels():
    """Import kernels/feature_matching.py on first use (triton is imported only when needed)."""
    global _kernels, _kernels_error
    if _kernels is None and _kernels_error is None:
        try:
            import rrm_fast.kernels.feature_matching as mod

            _kernels = mod
        except Exception as e:  # noqa: BLE001 - any import failure means: no Triton path
            _kernels_error = e
    return _kernels


def feature_matching_backend(device_type: str = "cpu") -> str:
    """Which implementation runs for tensors on ``device_type``.

    'triton' (compiled kernel, CUDA), 'triton-interpreter' (the kernel in Triton's interpreter,
    CPU with TRITON_INTERPRET=1) or 'reference' (plain PyTorch).
    """
    if device_type == "cuda":
        mod = _load_kernels()
        if mod is None:
            return "reference"
        return "triton-interpreter" if mod.INTERPRETED else "triton"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        mod = _load_kernels()
        if mod is not None and mod.INTERPRETED:
            return "triton-interpreter"
    return "reference"


# ---------------------------------------------------------------------------------------------
# kernel launches (shared by the eager autograd.Function and the compiled-graph custom ops)
# ---------------------------------------------------------------------------------------------
def _profiled(name: str):
    """A named range in torch.profiler traces (which kernel ran, with which gradients written);
    nothing at all when no profiler is recording, so the hot path pays one flag read."""
    if torch._C._autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _launch_fwd(student, teacher, kind, eps, need_ds, need_dt):
    mod = _load_kernels()
    if mod is None:
        raise RuntimeError(f"the Triton feature-matching kernel failed to import ({_kernels_error}); install triton")
    name = f"rrm_fast.feature_matching_fwd[{kind}, write_ds={need_ds}, write_dt={need_dt}]"
    with _on_device(student), _profiled(name):
        return mod.feature_matching_fwd(student, teacher, kind, eps, need_ds, need_dt)


def _launch_scale(row_grads, grad_rows, out_dtype):
    mod = _load_kernels()
    with _on_device(row_grads), _profiled("rrm_fast.feature_matching_scale_rows"):
        return mod.scale_rows(row_grads, grad_rows, out_dtype)


# ---------------------------------------------------------------------------------------------
# eager path: autograd.Function (a few microseconds of Python per call instead of the custom
# op's dispatcher round trip; at B=4096, D=2048 bf16 the kernels themselves take tens of us)
# ---------------------------------------------------------------------------------------------
class _FeatureMatchingRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, kind, eps, need_ds, need_dt):
        loss, ds, dt = _launch_fwd(student, teacher, kind, eps, need_ds, need_dt)
        ctx.save_for_backward(ds, dt)
        ctx.grad_dtypes = (student.dtype, teacher.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # backward(create_graph=True): a graph of the saved gradient is impossible
            raise RuntimeError(
                "the fused feature-matching loss has no second derivative; for double backward use "
                "rrm_fast.ops.feature_matching_reference.feature_matching_loss_ref"
            )
        ds, dt = ctx.saved_tensors
        s_dtype, t_dtype = ctx.grad_dtypes
        grad_s = _launch_scale(ds, grad_loss, s_dtype) if ctx.needs_input_grad[0] and ds.numel() else None
        grad_t = _launch_scale(dt, grad_loss, t_dtype) if ctx.needs_input_grad[1] and dt.numel() else None
        return grad_s, grad_t, None, None, None, None


# ---------------------------------------------------------------------------------------------
# compiled path: torch.library custom ops, opaque nodes for dynamo/AOTAutograd/inductor
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("rrm_fast::feature_matching_rows", mutates_args=())
def _feature_matching_rows_op(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, eps: float, need_ds: bool, need_dt: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_fwd(student, teacher, kind, eps, need_ds, need_dt)


@_feature_matching_rows_op.register_fake
def _(student, teacher, kind, eps, need_ds, need_dt):
    B, D = student.shape
    loss_dtype = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32
    saved_grad_dtype = _load_kernels().saved_grad_dtype
    loss = student.new_empty((B,), dtype=loss_dtype)
    ds = student.new_empty((B, D) if need_ds else (0,), dtype=saved_grad_dtype(student.dtype))
    dt = teacher.new_empty((B, D) if need_dt else (0,), dtype=saved_grad_dtype(teacher.dtype))
    return loss, ds, dt


@torch.library.custom_op("rrm_fast::feature_matching_scale_rows", mutates_args=())
def _scale_rows_op(row_grads: torch.Tensor, grad_rows: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _launch_scale(row_grads, grad_rows, out_dtype)


@_scale_rows_op.register_fake
def _(row_grads, grad_rows, out_dtype):
    return row_grads.new_empty(row_grads.shape, dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    _, ds, dt = output
    ctx.save_for_backward(ds, dt)
    ctx.grad_dtypes = (inputs[0].dtype, inputs[1].dtype)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_ds, _grad_dt):
    ds, dt = ctx.saved_tensors
    s_dtype, t_dtype = ctx.grad_dtypes
    grad_s = grad_t = None
    if grad_loss is not None:
        if ctx.needs_input_grad[0] and ds.numel():
            grad_s = _scale_rows_op(ds, grad_loss, s_dtype)
        if ctx.needs_input_grad[1] and dt.numel():
            grad_t = _scale_rows_op(dt, grad_loss, t_dtype)
    return grad_s, grad_t, None, None, None, None


_feature_matching_rows_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# public functional
# ---------------------------------------------------------------------------------------------
def _check_inputs(student, teacher, kind: str, reduction: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown feature-matching kind {kind!r}; choose one of {KINDS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} features must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(
                f"{name} features must be 2-D (batch, dim), got shape {tuple(x.shape)}; flatten them with .flatten(1)"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name} features must be floating point, got {x.dtype}; cast them with .float()")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ in shape; "
            "project the student's features to the teacher's width first"
        )
    if student.device != teacher.device:
        raise ValueError(
            f"student features are on {student.device} but teacher features on {teacher.device}; move both to one device"
        )
    if student.shape[0] == 0 or student.shape[1] == 0:
        raise ValueError(f"feature matching needs at least one row and one column, got shape {tuple(student.shape)}")


def feature_matching_rows(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine", eps: float = EPS):
    """Per-row feature-matching loss (B,), on the dispatched backend; differentiable."""
    backend = feature_matching_backend(student.device.type)
    if backend == "reference":
        from .feature_matching_reference import feature_matching_rows_ref

        return feature_matching_rows_ref(student, teacher, kind, eps)
    grad_on = torch.is_grad_enabled()
    need_ds = grad_on and student.requires_grad
    need_dt = grad_on and teacher.requires_grad
    if torch.compiler.is_compiling():
        loss, _, _ = _feature_matching_rows_op(student, teacher, kind, float(eps), need_ds, need_dt)
        return loss
    return _FeatureMatchingRows.apply(student, teacher, kind, float(eps), need_ds, need_dt)


def feature_matching_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine", reduction: str = "mean"
) -> torch.Tensor:
    """Row-wise feature-matching loss between student and teacher features (B x D each).

    kind: 'cosine' (cos(s_i, t_i), F.cosine_similarity semantics, eps=1e-6 on each norm),
    'rel_l2' (||s_i - t_i|| / ||t_i||) or 'normalized_l2' (||s_i/||s_i|| - t_i/||t_i||||^2).
    reduction: 'mean' | 'sum' over rows, or 'none' for the (B,) per-row values.
    Returns fp32 (fp64 for fp64 inputs) whatever the input dtype. Cosine is a similarity: to
    train with it, minimise its negative (RRMLoss does the sign for you).
    """
    _check_inputs(student, teacher, kind, reduction)
    if feature_matching_backend(student.device.type) == "reference":
        return feature_matching_loss_ref(student, teacher, kind, reduction)
    return reduce_rows(feature_matching_rows(student, teacher, kind), reduction)
