"""Wuma engine: FF1 codes, code formats, batches, LMDB stores.

The safe entry points::

    from engine import DataFolder
    data = DataFolder.init("wuma-data")          # or DataFolder("wuma-data")
    batch = data.create_batch("cap", 1_000_000)
    data.codes.verify("HTTPS://S.EXAMPLE.CN/Q/1ABCD...")
"""

from engine.batches import Batch
from engine.codes import INVALID, Verification
from engine.data import DataFolder, default_data_path
from engine.errors import Conflict, DataFolderError, InvalidCode, NotFound, WumaError

__all__ = [
    "Batch",
    "Conflict",
    "DataFolder",
    "DataFolderError",
    "INVALID",
    "InvalidCode",
    "NotFound",
    "Verification",
    "WumaError",
    "default_data_path",
]
