"""The single dispatch point to rrm_fast's kernels.

Everything in the package that runs a fused op imports it from here:

* PGD step ops (in place on delta): ``linf_step_``, ``l2_step_``,
  ``linf_random_init_``, ``l2_random_init_`` — compiled C++/CUDA custom ops from
  csrc/ when the extension loads, else the PyTorch references in
  ``pgd_reference.py`` (with one warning).
* ``feature_matching_loss`` — the fused Triton kernel on CUDA (or on CPU under
  ``TRITON_INTERPRET=1``), else the PyTorch reference.
"""
from .pgd_step import (  # noqa: F401
    l2_random_init_,
    l2_step_,
    linf_random_init_,
    linf_step_,
    pgd_backend,
)
from .feature_matching import feature_matching_loss, feature_matching_backend  # noqa: F401
