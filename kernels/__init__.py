"""Triton kernels of rrm_fast (installed as ``rrm_fast.kernels``).

Modules are imported on first use by their dispatchers in ``rrm_fast.ops`` (so that
``TRITON_INTERPRET=1`` can still be set before triton compiles anything):

* ``feature_matching`` — fused per-row feature-matching loss and its saved gradient
  (cosine, rel_l2, normalized_l2); dispatched by ``rrm_fast.ops.feature_matching``.
* ``aot`` — compiles every variant those wrappers launch for a CUDA target (sm_80, sm_90)
  without a GPU, as CI does (``python -m rrm_fast.kernels.aot``).
"""
