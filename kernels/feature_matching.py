"""Fused feature-matching loss: one pass over S and T gives the per-row loss and dL/dS, dL/dT.

Layer 1 of three (kernel -> custom op with autograd in rrm_fast/ops/feature_matching.py ->
functional / nn.Module in rrm_fast). This module only launches kernels; it does no autograd.

Under ``TRITON_INTERPRET=1`` (set before this module is first imported) the kernels run in
Triton's interpreter on CPU tensors, which is how CI tests the kernel itself without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

KIND_IDS = {"cosine": 0, "rel_l2": 1, "normalized_l2": 2}

# Largest D chunk held in registers. D <= MAX_BLOCK_D is read from memory exactly once and kept in
# registers for the gradient writes; larger D loops twice, the second loop re-reading the row from
# L1/L2 (a row of S and T at D=8192 fp32 is 64 KiB, so it is still cache-resident when re-read).
MAX_BLOCK_D = 4096
# The looped path (D > MAX_BLOCK_D) runs one row per program in LOOP_BLOCK_D-wide chunks on
# LOOP_WARPS warps: 8 elements per thread for each of its three or four accumulators and two
# input tiles. With 4096-wide chunks (16 per thread) those variants needed ~100 registers, and
# ptxas 13.4 (Triton 3.9's, for sm_90) capped some at 80 and spilled (tests/test_triton_aot.py).
LOOP_BLOCK_D = 2048
LOOP_WARPS = 8
# Elements per (rows x D-chunk) tile. Small D packs several rows into one program so that each
# program still issues wide loads; large D gets one or two rows per program.
TILE_ELEMS = 4096
# Triton's interpreter runs programs one after another, each as numpy calls, so its cost is per
# program: under TRITON_INTERPRET=1 the tiles are 16x larger (same kernel code, fewer programs).
TILE_ELEMS_INTERPRETED = 1 << 16
# Fused multiply-add in the accumulations (s*s + acc rounds once): pinned rather than left to
# Triton's default, which 3.9 warns will flip to off in 3.10.
FP_FUSION = True


# Per row, with s, t the student/teacher rows (accumulated in fp32, or fp64 for fp64 inputs):
#   ss = s.s, tt = t.t, st = s.t, ns = sqrt(ss), nt = sqrt(tt), cs = max(ns, eps), ct = max(nt, eps)
# cosine         l = st / (cs ct)                       (F.cosine_similarity: each norm clamped)
#                dl/ds = t/(cs ct) - l s/(cs ns)         (0 for the s term when ns == 0)
#                dl/dt = s/(cs ct) - l t/(ct nt)
#   (torch clamps the norms under no_grad, so autograd differentiates ns, not cs: s/(cs ns), which is
#    s/ns^2 whenever ns >= eps; a zero row gives l = 0 and the finite gradient t/(eps nt).)
# rel_l2         d = s - t, l = |d| / ct
#                dl/ds = d/(|d| ct)                      (0 when d == 0, as torch's norm backward)
#                dl/dt = -d/(|d| ct) - l [nt >= eps] t/(nt ct)
# normalized_l2  u = s/cs - t/ct, l = u.u
#                dl/ds = 2u/cs - 2 (u.s) [ns >= eps] s/(cs^2 ns)
#                      = A s - 2 t/(cs ct),  A = 2 st/(ct cs^2 ns) if ns >= eps else 2/cs^2
#                dl/dt = -2 s/(cs ct) + C t, C = 2 st/(cs ct^2 nt) if nt >= eps else 2/ct^2
#   (A and C are written without the 2/cs^2 - 2/cs^2 cancellation; l = u.u is accumulated from u
#    itself in the write loop, not from ss, st, tt, so a near-zero loss keeps its relative accuracy.)
# Pass 1 accumulates ss, tt, st (and d.d for rel_l2) over D; pass 2 writes dS, dT (and u.u).
@triton.jit
def _feature_matching_fwd_kernel(
    S, T, LOSS, DS, DT,
    B, D,
    stride_sb, stride_sd, stride_tb, stride_td, stride_dsb, stride_dtb,
    EPS: tl.constexpr,
    KIND: tl.constexpr,
    WRITE_DS: tl.constexpr,
    WRITE_DT: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    rows64 = rows.to(tl.int64)
    s_rows = S + rows64[:, None] * stride_sb
    t_rows = T + rows64[:, None] * stride_tb
    cols = tl.arange(0, BLOCK_D)
    # eps is a compile-time constant built in ACC: a runtime float argument is typed fp32 by the
    # JIT, which would round fp64's eps (the interpreter keeps the Python float, hiding that).
    eps = tl.full([BLOCK_B], EPS, dtype=ACC)

    # ---- pass 1: row statistics -------------------------------------------------------------
    if ONE_CHUNK:
        mask = row_mask[:, None] & (cols[None, :] < D)
        c64 = cols.to(tl.int64)[None, :]
        s = tl.load(s_rows + c64 * stride_sd, mask=mask, other=0.0).to(ACC)
        t = tl.load(t_rows + c64 * stride_td, mask=mask, other=0.0).to(ACC)
        ss = tl.sum(s * s, axis=1)
        tt = tl.sum(t * t, axis=1)
        st = tl.sum(s * t, axis=1)
        if KIND == 1:
            dd = tl.sum((s - t) * (s - t), axis=1)
    else:
        acc_ss = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        acc_tt = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        acc_st = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        if KIND == 1:
            acc_dd = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
        for off in range(0, D, BLOCK_D):
            c = off + cols
            mask = row_mask[:, None] & (c[None, :] < D)
            c64 = c.to(tl.int64)[None, :]
            s = tl.load(s_rows + c64 * stride_sd, mask=mask, other=0.0).to(ACC)
            t = tl.load(t_rows + c64 * stride_td, mask=mask, other=0.0).to(ACC)
            acc_ss += s * s
            acc_tt += t * t
            acc_st += s * t
            if KIND == 1:
                acc_dd += (s - t) * (s - t)
        ss = tl.sum(acc_ss, axis=1)
        tt = tl.sum(acc_tt, axis=1)
        st = tl.sum(acc_st, axis=1)
        if KIND == 1:
            dd = tl.sum(acc_dd, axis=1)

    ns = tl.sqrt(ss)
    nt = tl.sqrt(tt)
    cs = tl.maximum(ns, eps)
    ct = tl.maximum(nt, eps)
    zero = tl.zeros_like(ns)

    # ---- per-row loss and gradient coefficients ----------------------------------------------
    # dS = a_ss * s + a_st * t and dT = a_ts * s + a_tt * t (rel_l2 uses d = s - t directly).
    if KIND == 0:
        loss = st / (cs * ct)
        a_st = 1.0 / (cs * ct)
        a_ss = tl.where(ns > 0, -loss / (cs * tl.where(ns > 0, ns, 1.0)), zero)
        a_ts = a_st
        a_tt = tl.where(nt > 0, -loss / (ct * tl.where(nt > 0, nt, 1.0)), zero)
    elif KIND == 1:
        nd = tl.sqrt(dd)
        loss = nd / ct
        g = tl.where(nd > 0, 1.0 / (tl.where(nd > 0, nd, 1.0) * ct), zero)
        h = tl.where(nt >= eps, loss / (tl.where(nt > 0, nt, 1.0) * ct), zero)
    else:
        a_st = -2.0 / (cs * ct)
        a_ss = tl.where(ns >= eps, 2.0 * st / (ct * cs * cs * tl.where(ns > 0, ns, 1.0)), 2.0 / (cs * cs))
        a_ts = a_st
        a_tt = tl.where(nt >= eps, 2.0 * st / (cs * ct * ct * tl.where(nt > 0, nt, 1.0)), 2.0 / (ct * ct))
        inv_cs = 1.0 / cs
        inv_ct = 1.0 / ct

    # ---- pass 2: gradient writes (and u.u for normalized_l2) ---------------------------------
    NEED_PASS2: tl.constexpr = WRITE_DS or WRITE_DT or KIND == 2
    if NEED_PASS2:
        ds_rows = DS + rows64[:, None] * stride_dsb
        dt_rows = DT + rows64[:, None] * stride_dtb
        if ONE_CHUNK:
            # s and t are still in registers: no second read of the row.
            if KIND == 2:
                u = s * inv_cs[:, None] - t * inv_ct[:, None]
                loss = tl.sum(u * u, axis=1)
            if WRITE_DS:
                if KIND == 1:
                    ds = g[:, None] * (s - t)
                else:
                    ds = a_ss[:, None] * s + a_st[:, None] * t
                tl.store(ds_rows + cols[None, :], ds.to(DS.dtype.element_ty), mask=mask)
            if WRITE_DT:
                if KIND == 1:
                    dt = -g[:, None] * (s - t) - h[:, None] * t
                else:
                    dt = a_ts[:, None] * s + a_tt[:, None] * t
                tl.store(dt_rows + cols[None, :], dt.to(DT.dtype.element_ty), mask=mask)
        else:
            # Second loop re-reads the row; it was just read in pass 1 and is served from cache.
            if KIND == 2:
                acc_uu = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
            for off in range(0, D, BLOCK_D):
                c = off + cols
                mask = row_mask[:, None] & (c[None, :] < D)
                c64 = c.to(tl.int64)[None, :]
                s = tl.load(s_rows + c64 * stride_sd, mask=mask, other=0.0).to(ACC)
                t = tl.load(t_rows + c64 * stride_td, mask=mask, other=0.0).to(ACC)
                if KIND == 2:
                    u = s * inv_cs[:, None] - t * inv_ct[:, None]
                    acc_uu += u * u
                if WRITE_DS:
                    if KIND == 1:
                        ds = g[:, None] * (s - t)
                    else:
                        ds = a_ss[:, None] * s + a_st[:, None] * t
                    tl.store(ds_rows + c[None, :], ds.to(DS.dtype.element_ty), mask=mask)
                if WRITE_DT:
                    if KIND == 1:
                        dt = -g[:, None] * (s - t) - h[:, None] * t
                    else:
                        dt = a_ts[:, None] * s + a_tt[:, None] * t
                    tl.store(dt_rows + c[None, :], dt.to(DT.dtype.element_ty), mask=mask)
            if KIND == 2:
                loss = tl.sum(acc_uu, axis=1)

    tl.store(LOSS + rows, loss.to(LOSS.dtype.element_ty), mask=row_mask)


# out[i, :] = g[i, :] * go[i], computed in fp32 (fp64 for fp64 g) and stored in out's dtype (the
# input's, which for fp16 differs from g's fp32). This is the whole backward: the gradient of each
# row's loss was written by the forward kernel.
@triton.jit
def _scale_rows_kernel(
    G, GO, OUT,
    B, D,
    stride_gb, stride_go, stride_ob,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < B
    rows64 = rows.to(tl.int64)
    mask = row_mask[:, None] & (cols[None, :] < D)
    go = tl.load(GO + rows64 * stride_go, mask=row_mask, other=0.0).to(ACC)
    g = tl.load(G + rows64[:, None] * stride_gb + cols[None, :], mask=mask, other=0.0).to(ACC)
    tl.store(OUT + rows64[:, None] * stride_ob + cols[None, :], (g * go[:, None]).to(OUT.dtype.element_ty), mask=mask)


INTERPRETED = isinstance(_feature_matching_fwd_kernel, InterpretedFunction)


@dataclass(frozen=True)
class Launch:
    """One kernel launch, fully specified: ``kernel[grid](*args, **params)``.

    The wrappers below build these and run them; tests/test_triton_aot.py builds the same ones
    (on meta tensors) and compiles them for sm_80/sm_90 instead, so the variants compiled in CI
    are exactly the ones these wrappers launch.
    """

    kernel: object
    grid: tuple
    args: tuple
    params: dict

    def __call__(self):
        return self.kernel[self.grid](*self.args, **self.params)


def _acc_dtype(*dtypes: torch.dtype):
    return tl.float64 if any(dt == torch.float64 for dt in dtypes) else tl.float32


def saved_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the forward stores a row gradient in: fp32 for fp16 inputs, else the input's.

    A zero fp16 student row has dl/ds = t/(eps |t|), ~1e6/sqrt(D) per element: past fp16's 65504
    before grad_output (e.g. 1/B, or a GradScaler's scale) is applied, so fp16 would store inf.
    bf16 has fp32's range and keeps its own dtype (half the bytes written and kept alive).
    """
    return torch.float32 if dtype == torch.float16 else dtype


def launch_config(B: int, D: int) -> tuple[int, int, bool, int]:
    """(BLOCK_B, BLOCK_D, ONE_CHUNK, num_warps) for a B x D problem.

    Heuristic, chosen for bandwidth: a tile of ~TILE_ELEMS elements per program (enough bytes in
    flight per SM), one D chunk whenever D <= MAX_BLOCK_D so the row is read once, 4 warps for
    tiles up to 2048 elements and 8 above (keeps the two fp32 tiles at <= 32 registers per thread).
    Larger D loops over LOOP_BLOCK_D chunks, one row per program.
    """
    if D > MAX_BLOCK_D:
        return 1, LOOP_BLOCK_D, False, LOOP_WARPS
    block_d = max(triton.next_power_of_2(max(D, 1)), 16)
    tile = TILE_ELEMS_INTERPRETED if INTERPRETED else TILE_ELEMS
    block_b = max(1, min(triton.next_power_of_2(B), tile // block_d))
    one_chunk = D <= block_d
    num_warps = 4 if block_b * block_d <= 2048 else 8
    return block_b, block_d, one_chunk, num_warps


def fwd_launch(student, teacher, kind: str, eps: float, write_ds: bool, write_dt: bool):
    """(Launch, (loss rows, dL/dS, dL/dT)) of the fused forward; the outputs are allocated, not written."""
    B, D = student.shape
    acc = _acc_dtype(student.dtype, teacher.dtype)
    loss = torch.empty(B, device=student.device, dtype=torch.float64 if acc == tl.float64 else torch.float32)
    ds = torch.empty((B, D) if write_ds else (0,), device=student.device, dtype=saved_grad_dtype(student.dtype))
    dt = torch.empty((B, D) if write_dt else (0,), device=teacher.device, dtype=saved_grad_dtype(teacher.dtype))
    block_b, block_d, one_chunk, num_warps = launch_config(B, D)
    args = (
        # An unwritten gradient still needs a valid pointer for the (never executed) stores.
        student, teacher, loss, ds if write_ds else student, dt if write_dt else teacher,
        B, D,
        student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
        D if write_ds else 0, D if write_dt else 0,
    )
    params = dict(
        EPS=float(eps), KIND=KIND_IDS[kind], WRITE_DS=write_ds, WRITE_DT=write_dt, ONE_CHUNK=one_chunk, ACC=acc,
        BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps, enable_fp_fusion=FP_FUSION,
    )
    return Launch(_feature_matching_fwd_kernel, (triton.cdiv(B, block_b),), args, params), (loss, ds, dt)


def scale_launch(grad_rows_loss, grad_out, out_dtype: torch.dtype):
    """(Launch, out) of the backward's row scaling; out is allocated, not written."""
    B, D = grad_rows_loss.shape
    out = torch.empty((B, D), device=grad_rows_loss.device, dtype=out_dtype)
    block_d = max(16, min(triton.next_power_of_2(D), 1024))
    tile = TILE_ELEMS_INTERPRETED if INTERPRETED else TILE_ELEMS
    block_b = max(1, min(triton.next_power_of_2(B), tile // block_d))
    grid = (triton.cdiv(B, block_b), triton.cdiv(D, block_d))
    args = (grad_rows_loss, grad_out, out, B, D, grad_rows_loss.stride(0), grad_out.stride(0), out.stride(0))
    params = dict(ACC=_acc_dtype(grad_rows_loss.dtype, grad_out.dtype), BLOCK_B=block_b, BLOCK_D=block_d,
                  num_warps=4, enable_fp_fusion=FP_FUSION)
    return Launch(_scale_rows_kernel, grid, args, params), out


def feature_matching_fwd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    kind: str,
    eps: float,
    write_ds: bool,
    write_dt: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused forward. Returns (loss rows, dL/dS, dL/dT).

    loss rows are fp32 (fp64 for fp64 inputs). dL/dS and dL/dT are contiguous, in
    saved_grad_dtype() of the student's / teacher's dtype; a gradient that was not asked for is
    returned as an empty tensor. Inputs may have any strides (row and column strides are passed).
    """
    launch, outputs = fwd_launch(student, teacher, kind, eps, write_ds, write_dt)
    launch()
    return outputs


def scale_rows(grad_rows_loss: torch.Tensor, grad_out: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """grad_rows_loss (B x D, contiguous rows) times grad_out (B,) per row, returned in out_dtype."""
    launch, out = scale_launch(grad_rows_loss, grad_out, out_dtype)
    launch()
    return out
