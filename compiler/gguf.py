"""A reader for llama.cpp's GGUF files (versions 2 and 3).

The file is memory-mapped; tensors are decoded on request. Every structural problem (wrong
magic, unknown version, truncated header or data, unknown value or tensor type, misaligned
offsets) raises :class:`ModelFileError` naming the file and the reason. Nothing is executed or
unpickled.

Tensor shapes are given in numpy order: GGUF lists dimensions innermost first, so a GGUF tensor
with dimensions ``[K, N]`` is returned with shape ``(N, K)``.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FlightgenError
from ..isa.weights import GroupQuantized

__all__ = ["ModelFileError", "GGUFTensorInfo", "GGUFFile"]

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32

# Metadata value types.
_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
            10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9

# Tensor types flightgen reads: name, elements per block, bytes per block.
_TENSOR_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
                 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}
_KNOWN_UNSUPPORTED = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K",
                      13: "Q5_K", 14: "Q6_K", 15: "Q8_K"}


class ModelFileError(FlightgenError):
    """A model file is malformed, truncated or unsupported."""


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives in a GGUF file.

    Members
    -------
    name : str
    kind : str
        ``"F32"``, ``"F16"``, ``"BF16"``, ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_1"``.
    shape : tuple of int
        Numpy order (outermost first).
    offset : int
        Absolute byte offset of the data in the file.
    nbytes : int
    """

    name: str
    kind: str
    shape: tuple
    offset: int
    nbytes: int


class _Cursor:
    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, size, what):
        if self.pos + size > len(self.data):
            raise ModelFileError(f"{self.path}: truncated file (while reading {what} at byte "
                                 f"{self.pos}, file has {len(self.data)} bytes)")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def scalar(self, fmt, what):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what):
        length = self.scalar("<Q", what)
        if length > len(self.data):
            raise ModelFileError(f"{self.path}: corrupt string length {length} in {what}")
        raw = self.take(length, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, kind, what):
        if kind in _SCALARS:
            fmt = _SCALARS[kind]
            size = np.dtype(fmt).itemsize
            value = np.frombuffer(self.take(size, what), dtype=fmt)[0]
            return bool(value) if kind == 7 else value.item()
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            item_kind = self.scalar("<I", what)
            count = self.scalar("<Q", what)
            if count > len(self.data):
                raise ModelFileError(f"{self.path}: corrupt array length {count} in {what}")
            if item_kind in _SCALARS and item_kind != 7:
                fmt = _SCALARS[item_kind]
                raw = self.take(count * np.dtype(fmt).itemsize, what)
                return np.frombuffer(raw, dtype=fmt).copy()
            return [self.value(item_kind, what) for _ in range(count)]
        raise ModelFileError(f"{self.path}: unknown metadata value type {kind} in {what}")


class GGUFFile:
    """A parsed GGUF file.

    Parameters
    ----------
    path : path-like

    Members
    -------
    path : Path
    version : int
    metadata : dict
        Key to value (str, int, float, bool, list, or a numpy array for numeric arrays).
    tensors : dict of str to GGUFTensorInfo
        In file order.

    Raises
    ------
    ModelFileError
        If the file is missing, not GGUF, an unsupported version, truncated or corrupt.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        except (OSError, ValueError) as error:  # empty files cannot be mapped
            if self.path.is_file() and self.path.stat().st_size == 0:
                raise ModelFileError(f"{self.path}: empty file, not a GGUF model") from None
            raise ModelFileError(f"{self.path}: cannot read ({error})") from None
        cursor = _Cursor(memoryview(self._data), self.path)
        if bytes(cursor.take(4, "the magic number")) != _MAGIC:
            raise ModelFileError(f"{self.path}: not a GGUF file (no GGUF magic number)")
        self.version = cursor.scalar("<I", "the version")
        if self.version not in _VERSIONS:
            raise ModelFileError(f"{self.path}: unsupported GGUF version {self.version} "
                                 f"(flightgen reads versions 2 and 3)")
        n_tensors = cursor.scalar("<Q", "the tensor count")
        n_metadata = cursor.scalar("<Q", "the metadata count")
        self.metadata = {}
        for index in range(n_metadata):
            key = cursor.string(f"metadata key {index}")
            kind = cursor.scalar("<I", f"the type of {key}")
            self.metadata[key] = cursor.value(kind, key)

        infos = []
        for index in range(n_tensors):
            name = cursor.string(f"tensor name {index}")
            n_dims = cursor.scalar("<I", f"the rank of {name}")
            if n_dims > 4:
                raise ModelFileError(f"{self.path}: tensor {name} has {n_dims} dimensions")
            dims = [cursor.scalar("<Q", f"the shape of {name}") for _ in range(n_dims)]
            kind = cursor.scalar("<I", f"the type of {name}")
            offset = cursor.scalar("<Q", f"the offset of {name}")
            infos.append((name, dims, kind, offset))

        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ModelFileError(f"{self.path}: general.alignment {alignment} is not a power "
                                 "of two")
        data_start = -(-cursor.pos // alignment) * alignment
        self.tensors = {}
        for name, dims, kind, offset in infos:
            if kind not in _TENSOR_TYPES:
                label = _KNOWN_UNSUPPORTED.get(kind, f"type {kind}")
                raise ModelFileError(
                    f"{self.path}: tensor {name} is {label}, which flightgen does not read "
                    "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
            label, block, block_bytes = _TENSOR_TYPES[kind]
            elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if dims and dims[0] % block:
                raise ModelFileError(f"{self.path}: tensor {name} ({label}) has rows of "
                                     f"{dims[0]}, not a multiple of {block}")
            nbytes = elements // block * block_bytes
            start = data_start + offset
            if offset % alignment:
                raise ModelFileError(f"{self.path}: tensor {name} is misaligned")
            if start + nbytes > len(self._data):
                raise ModelFileError(f"{self.path}: truncated file (tensor {name} needs bytes "
                                     f"{start}..{start + nbytes}, file has {len(self._data)})")
            self.tensors[name] = GGUFTensorInfo(name, label, tuple(reversed(dims)), start,
                                                nbytes)

    def field(self, key, default=...):
        """Return metadata ``key``; without a default, a missing key is a ModelFileError."""
        if key in self.metadata:
            return self.metadata[key]
        if default is ...:
            raise ModelFileError(f"{self.path}: missing metadata {key}")
        return default

    def tensor(self, name):
        """Decode tensor ``name``.

        Returns
        -------
        numpy.ndarray (float32 for F32/BF16, float16 for F16) or GroupQuantized
        """
        info = self.tensors.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: missing tensor {name}")
        raw = self._data[info.offset:info.offset + info.nbytes]
        if info.kind == "F32":
            return raw.view("<f4").reshape(info.shape).astype(np.float32)
        if info.kind == "F16":
            return raw.view("<f2").reshape(info.shape).astype(np.float16)
        if info.kind == "BF16":
            widened = raw.view("<u2").astype(np.uint32) << 16
            return widened.view(np.float32).reshape(info.shape)
        if len(info.shape) != 2:
            raise ModelFileError(f"{self.path}: quantized tensor {name} is not a matrix")
        return GroupQuantized.from_gguf_blocks(info.kind, np.asarray(raw), info.shape)
