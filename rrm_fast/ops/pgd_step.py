"""PGD step ops: dispatch to the compiled extension, or the PyTorch reference.

(Placeholder dispatch: the compiled kernels land with the PGD-step issue.)
"""
from .pgd_reference import l2_random_init_ref_, l2_step_ref_, linf_random_init_ref_, linf_step_ref_

linf_step_ = linf_step_ref_
l2_step_ = l2_step_ref_
linf_random_init_ = linf_random_init_ref_
l2_random_init_ = l2_random_init_ref_


def pgd_backend(device_type: str = "cpu") -> str:
    return "reference"
