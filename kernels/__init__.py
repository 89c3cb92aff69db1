"""Triton kernels of rrm_fast (installed as ``rrm_fast.kernels``)."""
