import os
import tempfile

import pytest
import torch

# Teachers trained by tests are cached here, never in the user's ~/.cache.
os.environ.setdefault("RRM_FAST_CACHE", tempfile.mkdtemp(prefix="rrm_fast_test_cache_"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
