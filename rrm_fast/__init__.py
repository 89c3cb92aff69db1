"""rrm_fast: cheap adversarial robustness through Robust Representation Matching."""
from __future__ import annotations

import importlib.util as _ilu
import os as _os
import sys as _sys

__version__ = "0.1.0"

# The Triton kernels live in the repository's top-level kernels/ folder and are installed
# as the subpackage rrm_fast.kernels. In a source checkout (or an editable install whose
# finder does not map it) make the same import work by pointing at that folder.
if "rrm_fast.kernels" not in _sys.modules and _ilu.find_spec("rrm_fast.kernels") is None:
    _kdir = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    if _os.path.isfile(_os.path.join(_kdir, "__init__.py")):
        _spec = _ilu.spec_from_file_location(
            "rrm_fast.kernels", _os.path.join(_kdir, "__init__.py"), submodule_search_locations=[_kdir]
        )
        _mod = _ilu.module_from_spec(_spec)
        _sys.modules["rrm_fast.kernels"] = _mod
        _spec.loader.exec_module(_mod)
        kernels = _mod

from .ops import feature_matching_loss  # noqa: E402,F401
from .losses import RRMLoss  # noqa: E402,F401
