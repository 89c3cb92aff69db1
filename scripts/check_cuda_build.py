"""Build AND link rrm_fast's CUDA extension against a CUDA build of torch, on a machine with no GPU.

    python scripts/check_cuda_build.py [--torch 2.14.1] [--archs "8.0;9.0"] [--keep DIR]

CI runs this (tests/test_cuda_build.py), so a csrc/ change that would not build on a GPU
machine fails there. Two steps:

1. torch's CUDA wheel, unpacked once per machine. ``pip download --no-deps torch==VERSION``
   fetches PyPI's Linux wheel, which is the CUDA build (2.14.1: cu130, ~555 MB); its headers
   and the six libraries an extension links against are unpacked into
   ``~/.cache/rrm_fast/torch-cuda-VERSION/`` (``RRM_FAST_TORCH_CUDA_DIR`` moves the cache; it
   does not follow RRM_FAST_CACHE, which the tests redirect to a fresh folder) and the wheel
   is deleted. Later runs find the cache and download nothing.
2. setup.py's own CUDA extension (``cuda_extension``: the same sources and flags), built by
   torch's BuildExtension for the archs given, with the wheel's include/ and lib/ ahead of
   the installed (CPU) torch's on the search paths, and linked with ``-Wl,--no-undefined``
   against c10, torch, torch_cpu, torch_python, c10_cuda, torch_cuda, cudart and libpython:
   a symbol the binding uses that the CUDA torch does not export fails the link.

Exit status 0: the extension compiled and linked. It cannot be loaded here (that needs the
CUDA torch's runtime libraries and a GPU): ``make gpu-check`` does that on a GPU machine.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TORCH = "2.14.1"  # PyPI's Linux wheel of this version is built with CUDA 13.0, as nvcc here
LINK_LIBRARIES = ("c10", "torch", "torch_cpu", "torch_python", "c10_cuda", "torch_cuda")


def cache_root() -> Path:
    explicit = os.environ.get("RRM_FAST_TORCH_CUDA_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rrm_fast"


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on path (two CI jobs on one machine download once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wheel_members(wheel: zipfile.ZipFile) -> list[str]:
    libs = {f"torch/lib/lib{name}.so" for name in LINK_LIBRARIES}
    return [n for n in wheel.namelist()
            if (n.startswith("torch/include/") and not n.endswith("/")) or n in libs or n == "torch/version.py"]


def unpack_wheel(wheel_path: Path, dest: Path) -> dict:
    """Headers, the link libraries and version.py of a torch wheel into dest/{include,lib}."""
    with zipfile.ZipFile(wheel_path) as wheel:
        version_py = wheel.read("torch/version.py").decode()
        members = _wheel_members(wheel)
        for name in members:
            target = dest / name[len("torch/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    cuda = re.search(r"^cuda(?:: Optional\[str\])?\s*=\s*'([^']+)'", version_py, re.M)
    missing = [lib for lib in LINK_LIBRARIES if not (dest / "lib" / f"lib{lib}.so").exists()]
    if cuda is None or missing:
        raise SystemExit(f"check_cuda_build: {wheel_path.name} is not a CUDA build of torch "
                         f"(cuda={cuda.group(1) if cuda else None}, missing {missing}); a CPU index may be configured")
    return {"wheel": wheel_path.name, "cuda": cuda.group(1), "bytes": wheel_path.stat().st_size}


def ensure_torch_cuda(version: str) -> Path:
    """The unpacked CUDA torch for version, downloading it if this machine has none yet."""
    root = cache_root()
    final = root / f"torch-cuda-{version}"
    if (final / "wheel.json").exists():
        return final
    with locked(root / f".torch-cuda-{version}.lock"):
        if (final / "wheel.json").exists():  # another process finished it while we waited
            return final
        with tempfile.TemporaryDirectory(dir=root, prefix=f".torch-cuda-{version}-") as tmp:
            tmp = Path(tmp)
            print(f"check_cuda_build: downloading torch=={version} (the CUDA wheel, ~555 MB) once into {final}",
                  flush=True)
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                            "--only-binary=:all:", "-q", "-d", str(tmp / "wheel"), f"torch=={version}"], check=True)
            wheels = list((tmp / "wheel").glob("torch-*.whl"))
            if len(wheels) != 1:
                raise SystemExit(f"check_cuda_build: pip download gave {wheels}, expected one torch wheel")
            info = unpack_wheel(wheels[0], tmp / "unpacked")
            info["download_and_unpack_s"] = round(time.time() - t0)
            (tmp / "unpacked" / "wheel.json").write_text(json.dumps(info, indent=1))
            if final.exists():  # a partial earlier attempt (no wheel.json): replace it
                shutil.rmtree(final)
            os.replace(tmp / "unpacked", final)
    return final


def cuda_home() -> Path:
    """The CUDA toolkit: CUDA_HOME, else the one nvcc on PATH belongs to, else /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    candidates.append("/usr/local/cuda")  # e.g. when PATH's nvcc is a wrapper script elsewhere
    for home in filter(None, candidates):
        if (Path(home) / "bin" / "nvcc").is_file() and (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home)
    raise SystemExit("check_cuda_build: no CUDA toolkit found (nvcc and its headers); install it or set CUDA_HOME")


def python_link_args() -> list[str]:
    """libpython, so that -Wl,--no-undefined also resolves the module's Python C-API symbols."""
    libdir, ldlibrary = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY") or ""
    if not (libdir and ldlibrary.endswith(".so") and (Path(libdir) / ldlibrary).exists()):
        raise SystemExit("check_cuda_build: this Python has no shared libpython to link against "
                         f"(LIBDIR={libdir}, LDLIBRARY={ldlibrary}); use a Python built with --enable-shared")
    return [f"-L{libdir}", f"-l{ldlibrary[3:-3]}"]


def build(torch_cuda: Path, archs: str, out: Path) -> Path:
    """setup.py's CUDA extension, compiled and linked into out/lib; returns the .so."""
    from setuptools import setup
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    # The installed torch is a CPU build, for which cpp_extension never looks for CUDA (CUDA_HOME
    # stays None). Point it at nvcc's toolkit: with that one value BuildExtension compiles and
    # links exactly as it does on a GPU machine (nothing else it reads differs between torch's
    # CPU and CUDA builds; the headers and libraries come from the CUDA wheel, first on the paths).
    cpp_extension.CUDA_HOME = str(cuda_home())

    spec = importlib.util.spec_from_file_location("rrm_fast_setup", ROOT / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)
    include = torch_cuda / "include"
    extension = setup_module.cuda_extension(
        CUDAExtension,
        include_dirs=[str(include), str(include / "torch" / "csrc" / "api" / "include")],
        library_dirs=[str(torch_cuda / "lib")],
        extra_link_args=["-Wl,--no-undefined", *python_link_args()],
    )
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    cwd = os.getcwd()
    os.chdir(ROOT)  # the extension's sources are relative to the repository
    try:
        setup(name="rrm_fast_cuda_build_check", ext_modules=[extension], cmdclass={"build_ext": BuildExtension},
              script_args=["-q", "build_ext", "--build-lib", str(out / "lib"), "--build-temp", str(out / "temp")])
    finally:
        os.chdir(cwd)
    built = list((out / "lib" / "rrm_fast").glob("_C_cuda*.so"))
    if len(built) != 1:
        raise SystemExit(f"check_cuda_build: expected one _C_cuda*.so, found {built}")
    return built[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch", default=DEFAULT_TORCH, help="torch version whose CUDA wheel to build against")
    p.add_argument("--archs", default="8.0;9.0", help="TORCH_CUDA_ARCH_LIST for the build")
    p.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    t0 = time.time()
    torch_cuda = ensure_torch_cuda(args.torch)
    info = json.loads((torch_cuda / "wheel.json").read_text())
    nvcc_version = re.search(r"release ([\d.]+)", subprocess.run([str(cuda_home() / "bin" / "nvcc"), "--version"], capture_output=True,
                                                                 text=True).stdout)
    print(f"check_cuda_build: torch {args.torch} ({info['wheel']}, CUDA {info['cuda']}) from {torch_cuda}; "
          f"nvcc {nvcc_version.group(1) if nvcc_version else '?'}; archs {args.archs}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rrm_fast_cuda_build_") as tmp:
        out = args.keep or Path(tmp)
        so = build(torch_cuda, args.archs, out)
        needed = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        libs = re.findall(r"\(NEEDED\).*\[(.+?)\]", needed)
        print(f"check_cuda_build: {so.name} compiled and linked (-Wl,--no-undefined) in {time.time() - t0:.0f} s; "
              f"needs {', '.join(libs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
