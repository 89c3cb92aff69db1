"""The Triton kernels compiled for real GPUs (sm_80, sm_90) on a machine without one.

rrm_fast.kernels.aot makes Triton's JIT compile for a CUDA target without a device, through
TTIR -> PTX -> cubin with Triton's bundled ptxas, for launches built by the wrappers' own
fwd_launch / scale_launch. That catches what the interpreter cannot: codegen failures, register
spills, unvectorised loads, and values the compiled kernel types differently from the
interpreter (a Python float argument becomes fp32 when compiled, a Python float in the
interpreter).
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
# importorskip: a Triton without the driver API this uses (older than these tests were written
# for) skips here instead of breaking collection of the whole suite (e.g. `pytest -m cuda`).
aot = pytest.importorskip("rrm_fast.kernels.aot")
from rrm_fast.kernels import feature_matching as fm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)

if fm.INTERPRETED:
    pytest.skip("kernels imported under TRITON_INTERPRET=1: nothing compiles for a GPU here", allow_module_level=True)


@pytest.fixture(autouse=True)
def private_triton_cache(tmp_path, monkeypatch):
    """Compile for real every time (a warm ~/.triton cache would skip codegen and ptxas)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def compile_case(case: aot.Case, arch: int = 90):
    with aot.compile_only(arch):
        return aot.compile_launch(aot.case_launch(case))


def entry_params(ptx: str) -> list[str]:
    """The .param declarations of the kernel entry (its argument list)."""
    head = ptx[ptx.index(".entry"):ptx.index("{", ptx.index(".entry"))]
    return re.findall(r"\.param\s+\.(\w+)", head)


def test_fp64_eps_is_an_exact_fp64_constant_in_the_compiled_kernel():
    """A Python float launch argument is typed fp32 by the compiled JIT: fp64 rows would clamp their
    norms at fp32(1e-6) = 9.99999997e-7. The compiled fp64 kernel must take no fp32 argument and
    carry 1e-6 as the fp64 constant itself (PTX writes fp64 literals as 0d + 16 hex digits)."""
    compiled = compile_case(aot.Case("fwd", 6, 37, "fp64", "fp64", "cosine", True, True))
    ptx = compiled.asm["ptx"]
    assert "f32" not in entry_params(ptx), f"the fp64 kernel takes an fp32 argument: {entry_params(ptx)}"
    exact = "0d" + struct.pack(">d", 1e-6).hex().upper()
    rounded = "0d" + struct.pack(">d", struct.unpack("<f", struct.pack("<f", 1e-6))[0]).hex().upper()
    assert exact in ptx, f"eps=1e-6 is not in the fp64 kernel as {exact}"
    assert rounded not in ptx, f"eps appears rounded through fp32 ({rounded})"


@pytest.mark.parametrize("B, D", [(2**20, 4096), (65536, 40000)], ids=["one-chunk", "looped"])
def test_column_offsets_are_64_bit_in_the_compiled_kernel(B, D):
    """A column-major student view has column stride B; col * B overflows int32 once B*D > 2^31
    (2^32 and 2.6e9 elements here, on meta tensors). No column offset may be multiplied in i32."""
    assert fm.launch_config(B, D)[2] == (D <= fm.MAX_BLOCK_D)
    compiled = compile_case(aot.Case("fwd", B, D, "bf16", "bf16", "rel_l2", True, True, strided=True))
    ttir = compiled.asm["ttir"]
    i32_tensor_muls = [line.strip() for line in ttir.splitlines() if "arith.muli" in line and "xi32>" in line]
    assert not i32_tensor_muls, "32-bit offset multiplies:\n" + "\n".join(i32_tensor_muls)
    assert any("arith.muli" in line and "xi64>" in line for line in ttir.splitlines()), "no 64-bit offset multiply"


def test_cases_cover_every_axis_the_wrappers_vary():
    """cases() reaches every kind, accumulator, gradient mode, chunking, BLOCK_D and stride pattern
    that fwd_launch / scale_launch produce (read off the launches themselves)."""
    launches = [aot.case_launch(c) for c in aot.cases()]
    fwd = [lc for lc in launches if lc.kernel is fm._feature_matching_fwd_kernel]
    seen = {key: {lc.params[key] for lc in fwd} for key in ("KIND", "WRITE_DS", "WRITE_DT", "ONE_CHUNK", "ACC")}
    assert seen["KIND"] == set(fm.KIND_IDS.values())
    assert seen["WRITE_DS"] == seen["WRITE_DT"] == seen["ONE_CHUNK"] == {True, False}
    assert {str(a) for a in seen["ACC"]} == {"fp32", "fp64"}
    every_block_d = {fm.launch_config(B, D)[1] for B in (1, 4096) for D in range(1, 3 * fm.MAX_BLOCK_D)}
    assert {lc.params["BLOCK_D"] for lc in fwd} == every_block_d
    pointer_dtypes = {(lc.args[0].dtype, lc.args[1].dtype) for lc in fwd}
    assert {(d, d) for d in aot.SAME_DTYPES} | set(aot.MIXED_DTYPES) <= pointer_dtypes
    assert any(lc.args[0].stride(1) != 1 for lc in fwd), "no strided student"
    scale_out = {lc.args[2].dtype for lc in launches if lc.kernel is fm._scale_rows_kernel}
    assert scale_out == set(aot.SAME_DTYPES)


@pytest.mark.slow
def test_every_launchable_variant_compiles_for_sm80_and_sm90(tmp_path, capsys):
    """Every case compiles to a cubin for sm_80 and sm_90 (one process per target, in parallel);
    no spills where fp32/bf16 inputs meet D <= 8192; 16-byte loads for contiguous 16-divisible rows.
    The register/spill table is printed into the test output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = {arch: subprocess.Popen([sys.executable, "-m", "rrm_fast.kernels.aot", "--arch", str(arch),
                                     "--json", str(tmp_path / f"sm{arch}.json")], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for arch in ARCHS}
    outputs = {arch: p.communicate(timeout=1200)[0] for arch, p in procs.items()}
    for arch, p in procs.items():
        assert (tmp_path / f"sm{arch}.json").exists(), f"sm_{arch} compile run crashed:\n{outputs[arch][-3000:]}"
    rows = [r for arch in ARCHS for r in json.loads((tmp_path / f"sm{arch}.json").read_text())]
    with capsys.disabled():
        print("\n" + "\n".join(outputs[arch].rstrip() for arch in ARCHS))
    failed = [f"sm_{r['arch']} {r['variant']}: {r['error']}" for r in rows if "error" in r]
    assert not failed, "variants that do not compile:\n" + "\n".join(failed)
    n_cases = len(aot.cases())
    for arch in ARCHS:
        covered = sum(1 + len(r["also"]) for r in rows if r["arch"] == arch)
        assert covered == n_cases, f"sm_{arch}: {covered} of {n_cases} cases compiled"
    spills = [f"sm_{r['arch']} {'; '.join([r['variant'], *r['also']])}: {r['local']} B local, {r['stack']} B stack"
              for r in rows if r["spill_gated"] and r["spills"]]
    assert not spills, "register spills in fp32/bf16 variants with D <= 8192:\n" + "\n".join(spills)
    narrow = [f"sm_{r['arch']} {r['variant']}: {r['load_bits']}-bit loads" for r in rows
              if r["case"]["kernel"] == "fwd" and r["spill_gated"] and not r["case"]["strided"]
              and r["case"]["D"] % 16 == 0 and r["load_bits"] < 128]
    assert not narrow, "contiguous rows not loaded 16 bytes at a time:\n" + "\n".join(narrow)
