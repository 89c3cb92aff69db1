"""rrm_fast build script.

Pure-Python package plus compiled extensions from csrc/:

* ``rrm_fast._C``      the PGD step custom ops (schemas, CPU and Meta kernels); always
                       built, needs only a C++17 compiler and the installed torch.
* ``rrm_fast._C_cuda`` their CUDA kernels; built when the installed torch has CUDA and
                       nvcc is found.

The Triton kernels live in the top-level kernels/ folder and ship as ``rrm_fast.kernels``.
Install with:  pip install --no-build-isolation -e .

Environment switches (1/0, true/false, yes/no, on/off):
  RRM_FAST_SKIP_EXT=1   build no extension; the ops then run their PyTorch references
  RRM_FAST_CUDA=0       never build the CUDA extension
  RRM_FAST_CUDA=1       require it (fail the build if torch has no CUDA or nvcc is missing)
  TORCH_CUDA_ARCH_LIST  CUDA architectures to build for (torch's variable), e.g. "8.0;9.0"
  MAX_JOBS              parallel compile jobs when ninja is installed
"""
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")

CPU_SOURCES = [
    "csrc/pgd_step_op.cpp",
    "csrc/cpu/pgd_step_cpu_default.cpp",
    "csrc/cpu/pgd_step_cpu_avx2.cpp",
    "csrc/cpu/pgd_step_cpu_avx512.cpp",
]
CUDA_SOURCES = [
    "csrc/cuda/pgd_step_cuda_binding.cpp",
    "csrc/cuda/pgd_step_cuda_kernels.cu",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_switch(env, name):
    """True/False for a set switch, None when unset; a typo fails loudly instead of being ignored."""
    value = env.get(name, "").strip().lower()
    if value == "":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SystemExit(f"rrm_fast setup: {name}={env[name]!r} is not a switch; set it to 1 or 0")


def cuda_build_decision(env, torch_cuda_version, nvcc_path):
    """(build the CUDA extension?, why) from the switch, torch's CUDA version and nvcc."""
    wanted = env_switch(env, "RRM_FAST_CUDA")
    if wanted is False:
        return False, "RRM_FAST_CUDA=0"
    missing = []
    if not torch_cuda_version:
        missing.append("the installed torch has no CUDA (torch.version.cuda is None)")
    if not nvcc_path:
        missing.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if missing:
        if wanted:
            raise SystemExit("rrm_fast setup: RRM_FAST_CUDA=1 but " + " and ".join(missing))
        return False, " and ".join(missing)
    return True, f"torch CUDA {torch_cuda_version}, nvcc at {nvcc_path}"


def _find_nvcc(env):
    cuda_home = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if cuda_home and os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc")


def extension_modules(env=os.environ):
    """The extensions to build and the build_ext command class, as the switches say."""
    if env_switch(env, "RRM_FAST_SKIP_EXT"):
        print("rrm_fast setup: RRM_FAST_SKIP_EXT=1, building no compiled extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as err:
        raise SystemExit(
            f"rrm_fast setup: torch is not importable here ({err}); the extensions build against the installed "
            "torch: pip install --no-build-isolation -e .  (or RRM_FAST_SKIP_EXT=1 for a pure-Python install)"
        ) from err

    linux = sys.platform.startswith("linux")
    # -O3 and -fopenmp-simd let the compiler vectorise the kernels' `omp simd` loops;
    # -fopenmp makes at::parallel_for parallel (it is a header template over OpenMP in
    # torch's CPU builds; the libgomp torch ships is the one that gets used).
    # -fno-math-errno turns sqrtf into one instruction; results are unchanged.
    # -ffp-contract=off keeps a*b + c as two roundings, as in the PyTorch reference (one
    # kernel per op), so the kernels match it bit for bit where the math allows.
    cxx_flags = [
        "-O3", "-g0", "-DNDEBUG", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd",
        "-Wall", "-Wno-unknown-pragmas",
    ]
    link_flags = []
    if linux:
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extensions = [
        CppExtension(
            "rrm_fast._C",
            CPU_SOURCES,
            include_dirs=[CSRC],
            extra_compile_args=cxx_flags,
            extra_link_args=link_flags,
        )
    ]
    build_cuda, why = cuda_build_decision(env, torch.version.cuda, _find_nvcc(env))
    print(f"rrm_fast setup: CUDA extension {'on' if build_cuda else 'off'} ({why})", file=sys.stderr)
    if build_cuda:
        extensions.append(cuda_extension(CUDAExtension))
    return extensions, {"build_ext": BuildExtension}


def cuda_extension(CUDAExtension, include_dirs=(), library_dirs=(), extra_link_args=()):
    """rrm_fast._C_cuda: its sources and flags, in one place (scripts/check_cuda_build.py builds
    the same extension against a CUDA torch's headers in CI; it passes that torch's directories,
    which then come ahead of the installed torch's)."""
    return CUDAExtension(
        "rrm_fast._C_cuda",
        CUDA_SOURCES,
        include_dirs=[*include_dirs, CSRC],
        library_dirs=list(library_dirs),
        # No --use_fast_math: sqrt and division round like the reference; --fmad=false
        # for the same reason as -ffp-contract=off above.
        extra_compile_args={
            "cxx": ["-O3", "-g0", "-DNDEBUG"],
            "nvcc": ["-O3", "-DNDEBUG", "-lineinfo", "--fmad=false"],
        },
        extra_link_args=list(extra_link_args),
    )


if __name__ == "__main__":
    ext_modules, cmdclass = extension_modules()
    packages = find_packages(include=["rrm_fast", "rrm_fast.*"]) + ["rrm_fast.kernels"]
    setup(
        name="rrm_fast",
        version="0.1.0",
        description="Fast Robust Representation Matching and adversarial training for PyTorch",
        packages=packages,
        package_dir={"rrm_fast.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        python_requires=">=3.10",
        # every package rrm_fast imports (tests/test_packaging.py installs exactly this into a clean venv)
        install_requires=["torch>=2.4", "numpy", "scipy", "safetensors", "pyyaml", "tqdm", "pillow", "matplotlib",
                          "triton>=3.1; platform_system == 'Linux'", "tensorboard", "jsonargparse>=4.40"],
        extras_require={"plot": ["matplotlib"], "dali": ["nvidia-dali-cuda130"], "test": ["pytest", "pytest-benchmark"]},
        entry_points={"console_scripts": ["rrm-fast-train=rrm_fast.train:main", "rrm-fast-eval=rrm_fast.eval:main"]},
    )
