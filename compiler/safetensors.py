"""A reader for Hugging Face ``.safetensors`` files (never a pickle).

Format: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), then the raw
little-endian data. The file is memory-mapped; every inconsistency raises
:class:`~flightgen.compiler.gguf.ModelFileError` naming the file and the problem.
"""

import json
import struct
from pathlib import Path

import numpy as np

from .gguf import ModelFileError

__all__ = ["SafetensorsFile"]

_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8", "I8": "<i1", "U8": "<u1",
           "I16": "<i2", "I32": "<i4", "I64": "<i8", "BOOL": "?"}
_MAX_HEADER = 100 << 20


class SafetensorsFile:
    """A parsed ``.safetensors`` file.

    Members
    -------
    path : Path
    metadata : dict of str to str
    shapes : dict of str to tuple
        Every tensor's shape, in file order.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        if size < 8:
            raise ModelFileError(f"{self.path}: truncated file ({size} bytes, no header)")
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        (length,) = struct.unpack("<Q", bytes(self._data[:8]))
        if length > min(_MAX_HEADER, size - 8):
            raise ModelFileError(f"{self.path}: header length {length} exceeds the file "
                                 f"({size} bytes); truncated or not a safetensors file")
        try:
            header = json.loads(bytes(self._data[8:8 + length]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(f"{self.path}: header is not valid JSON ({error})") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        base = 8 + length
        self._entries, self.shapes = {}, {}
        for name, entry in header.items():
            try:
                dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
                start, end = (int(v) for v in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ModelFileError(f"{self.path}: malformed header entry for {name}") from None
            if dtype not in _DTYPES:
                raise ModelFileError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            if end - start != int(np.prod(shape, dtype=np.int64)) * itemsize or start > end:
                raise ModelFileError(f"{self.path}: tensor {name} data_offsets do not match "
                                     f"its shape {shape} and dtype {dtype}")
            if base + end > size:
                raise ModelFileError(f"{self.path}: truncated file (tensor {name} ends at byte "
                                     f"{base + end}, file has {size})")
            self._entries[name] = (dtype, shape, base + start, base + end)
            self.shapes[name] = shape

    def tensor(self, name):
        """Return tensor ``name`` as a numpy array (BF16 and F16 widened to float32)."""
        if name not in self._entries:
            raise ModelFileError(f"{self.path}: missing tensor {name}")
        dtype, shape, start, end = self._entries[name]
        raw = self._data[start:end].view(_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if dtype in ("F16", "F32", "F64"):
            return raw.astype(np.float32)
        return np.array(raw)
