"""rrm_fast build script.

Pure-Python package plus (later) compiled extensions from csrc/.
The Triton kernels live in the top-level kernels/ folder and ship as ``rrm_fast.kernels``.
Install with:  pip install --no-build-isolation -e .
"""
from setuptools import find_packages, setup

packages = find_packages(include=["rrm_fast", "rrm_fast.*"]) + ["rrm_fast.kernels"]

setup(
    name="rrm_fast",
    version="0.1.0",
    description="Fast Robust Representation Matching and adversarial training for PyTorch",
    packages=packages,
    package_dir={"rrm_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "safetensors", "pyyaml", "tqdm"],
    extras_require={"plot": ["matplotlib"], "dali": ["nvidia-dali-cuda130"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["rrm-fast-train=rrm_fast.train:main", "rrm-fast-eval=rrm_fast.eval:main"]},
)
