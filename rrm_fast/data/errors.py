"""The one exception type the data package raises for bad input or missing files."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset could not be found, read or used.

    The message is always one line that names the path or argument at fault and how to
    fix it (where to get the files, which flag to pass).
    """
