"""Build checks: setup.py's switches, the CUDA compile checks, and a from-scratch CPU build.

The CUDA checks need nvcc (not a GPU): CI runs them on CPU-only machines so that a CUDA
compile or link error fails there too. scripts/check_cuda_compile.sh compiles the kernels
(.cu, warnings as errors); scripts/check_cuda_build.py builds and links the whole CUDA
extension against torch's CUDA wheel (downloaded once per machine). Without nvcc they skip,
saying so.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_cuda_compile.sh"
NVCC = shutil.which("nvcc") or os.environ.get("NVCC")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA compile check needs the CUDA toolkit")


def load_setup_module():
    """setup.py without running setup() (it only runs as __main__)."""
    spec = importlib.util.spec_from_file_location("rrm_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(env_overrides: dict, root: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_overrides)
    return subprocess.run(["bash", str(root / "scripts" / "check_cuda_compile.sh")], env=env, capture_output=True,
                          text=True, timeout=600)


# ---------------------------------------------------------------------------------------
# setup.py switches
# ---------------------------------------------------------------------------------------


def test_switch_values():
    setup = load_setup_module()
    assert setup.env_switch({}, "RRM_FAST_CUDA") is None
    assert setup.env_switch({"RRM_FAST_CUDA": "1"}, "RRM_FAST_CUDA") is True
    assert setup.env_switch({"RRM_FAST_CUDA": "off"}, "RRM_FAST_CUDA") is False
    with pytest.raises(SystemExit, match="RRM_FAST_CUDA='maybe' is not a switch"):
        setup.env_switch({"RRM_FAST_CUDA": "maybe"}, "RRM_FAST_CUDA")


def test_cuda_build_decision():
    decide = load_setup_module().cuda_build_decision
    assert decide({}, "12.8", "/usr/local/cuda/bin/nvcc")[0] is True
    assert decide({"RRM_FAST_CUDA": "0"}, "12.8", "/usr/local/cuda/bin/nvcc") == (False, "RRM_FAST_CUDA=0")
    built, why = decide({}, None, "/usr/local/cuda/bin/nvcc")
    assert built is False and "no CUDA" in why
    built, why = decide({}, "12.8", None)
    assert built is False and "nvcc was not found" in why
    with pytest.raises(SystemExit, match="RRM_FAST_CUDA=1 but the installed torch has no CUDA"):
        decide({"RRM_FAST_CUDA": "1"}, None, "/usr/local/cuda/bin/nvcc")


def test_extension_list():
    setup = load_setup_module()
    assert setup.extension_modules({"RRM_FAST_SKIP_EXT": "1"}) == ([], {})
    extensions, cmdclass = setup.extension_modules({"RRM_FAST_CUDA": "0"})
    assert [e.name for e in extensions] == ["rrm_fast._C"]
    assert "build_ext" in cmdclass
    assert all((ROOT / source).is_file() for e in extensions for source in e.sources)
    assert all((ROOT / source).is_file() for source in setup.CUDA_SOURCES)
    if torch.version.cuda is None:
        with pytest.raises(SystemExit, match="RRM_FAST_CUDA=1 but"):
            setup.extension_modules({"RRM_FAST_CUDA": "1"})


# ---------------------------------------------------------------------------------------
# CUDA compile check (scripts/check_cuda_compile.sh)
# ---------------------------------------------------------------------------------------


@needs_nvcc
def test_cuda_kernels_compile_with_nvcc():
    result = run_check({})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiles for sm_80" in result.stdout and "compiles for sm_90" in result.stdout


@needs_nvcc
@pytest.mark.slow
def test_cuda_extension_builds_and_links_against_cuda_torch():
    """setup.py's CUDA extension compiles (sm_80, sm_90) and links with -Wl,--no-undefined against
    torch's CUDA wheel (c10_cuda, torch_cuda, cudart, ...): ~40 s on 2 cores, plus a ~555 MB
    download the first time on a machine (cached in ~/.cache/rrm_fast/torch-cuda-VERSION)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_cuda_build.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"the CUDA extension does not build or link against CUDA torch:\n{tail}"
    assert "compiled and linked (-Wl,--no-undefined)" in result.stdout, tail
    assert "libc10_cuda.so" in result.stdout and "libcudart.so" in result.stdout, tail


@needs_nvcc
def test_cuda_compile_check_catches_an_error(tmp_path):
    """The check fails on a CUDA error (a copy of csrc/ with a type error in a kernel)."""
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    kernels = tmp_path / "csrc" / "cuda" / "pgd_step_cuda_kernels.cu"
    source = kernels.read_text()
    assert "  float acc = 0.f;\n" in source
    kernels.write_text(source.replace("  float acc = 0.f;\n", "  float acc = make_float4(0.f, 0.f, 0.f, 0.f);\n", 1))
    result = run_check({"RRM_FAST_CHECK_ARCHS": "80"}, root=tmp_path)
    assert result.returncode != 0
    assert "pgd_step_cuda_kernels.cu" in result.stderr


# ---------------------------------------------------------------------------------------
# A from-scratch build of the CPU extension
# ---------------------------------------------------------------------------------------

LOAD_BUILT_EXTENSION = textwrap.dedent(
    """
    import importlib.util, sys, torch
    path = sys.argv[1]
    spec = importlib.util.spec_from_file_location("rrm_fast._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d, g, x = torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    torch.ops.rrm_fast.linf_step_(d, g, x, None, 0.1, 0.05, 0.0, 1.0, None)
    assert torch.allclose(d, 0.05 * torch.sign(g), atol=1e-7), d
    print("ABI", module.ABI_VERSION, module.cpu_isa())
    """
)


@pytest.mark.slow
def test_cpu_extension_builds_from_scratch(tmp_path):
    """setup.py builds rrm_fast._C into an empty directory (~45 s on 2 cores) and it loads."""
    env = dict(os.environ, RRM_FAST_CUDA="0")
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "temp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = list((tmp_path / "lib" / "rrm_fast").glob("_C*.so"))
    assert len(built) == 1, built
    load = subprocess.run([sys.executable, "-c", LOAD_BUILT_EXTENSION, str(built[0])], env=env,
                          capture_output=True, text=True, timeout=120)
    assert load.returncode == 0, load.stdout + load.stderr
    from rrm_fast._ext import EXPECTED_ABI_VERSION

    assert load.stdout.split()[:2] == ["ABI", str(EXPECTED_ABI_VERSION)]
