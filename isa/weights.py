"""Group-quantized weight tensors: integer codes with per-group scales (and minimums).

A weight matrix of shape ``(N, K)`` (outputs, inputs) is split along ``K`` into groups of
``group`` consecutive inputs. Element ``w[n, k]`` of group ``g = k // group`` stands for::

    w[n, k] = scales[n, g] * codes[n, k] + mins[n, g]      (mins is 0 for symmetric groups)

Codes are integers: signed (``int8`` storage, range ``[-2**(bits-1), 2**(bits-1) - 1]``) or
unsigned (``[0, 2**bits - 1]``). Scales and minimums are IEEE binary16 (float16), the format GGUF
stores them in, so GGUF tensors load **exactly**:

========  ======  ========  ======  ===========================================
GGUF      bits    codes     group   value
========  ======  ========  ======  ===========================================
Q8_0      8       signed    32      ``d * q``
Q4_0      4       signed    32      ``d * (q - 8)``; stored here as code ``q - 8``
Q4_1      4       unsigned  32      ``d * q + m``
========  ======  ========  ======  ===========================================

:meth:`GroupQuantized.dequantize` gives the float32 values exactly as llama.cpp computes them
(``float32(d) * code + float32(m)``), which is what the float reference uses.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupQuantized", "GGUF_BLOCK"]

#: Elements per GGUF Q8_0/Q4_0/Q4_1 block (= the group size along K).
GGUF_BLOCK = 32


@dataclass(frozen=True, eq=False)
class GroupQuantized:
    """A weight matrix quantized in groups along its last axis.

    Members
    -------
    codes : ndarray of int8 (signed) or uint8 (unsigned), shape (N, K)
    bits : int
        Code width, 2 to 8.
    signed : bool
        Whether codes are signed.
    group : int
        Elements per group along K; divides K.
    scales : ndarray of float16, shape (N, K // group)
    mins : ndarray of float16, shape (N, K // group), or None for symmetric groups
    """

    codes: np.ndarray
    bits: int
    signed: bool
    group: int
    scales: np.ndarray
    mins: np.ndarray | None = None

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"code width must be 2 to 8 bits, not {self.bits!r}")
        codes = self.codes
        if codes.ndim != 2:
            raise ValueError(f"codes must be a matrix, not shape {codes.shape}")
        n, k = codes.shape
        if self.group < 1 or k % self.group:
            raise ValueError(f"group size {self.group} does not divide the {k} inputs")
        expected = np.int8 if self.signed else np.uint8
        if codes.dtype != expected:
            raise TypeError(f"{'signed' if self.signed else 'unsigned'} codes must be "
                            f"{np.dtype(expected).name}, not {codes.dtype}")
        lo, hi = self.code_range
        if codes.size and (codes.min() < lo or codes.max() > hi):
            raise ValueError(f"codes must lie in [{lo}, {hi}] for {self.bits}-bit "
                             f"{'signed' if self.signed else 'unsigned'} codes")
        for name in ("scales", "mins"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.dtype != np.float16 or value.shape != (n, k // self.group):
                raise ValueError(f"{name} must be float16 of shape {(n, k // self.group)}, not "
                                 f"{value.dtype} {value.shape}")

    @property
    def shape(self):
        """``(N, K)``."""
        return self.codes.shape

    @property
    def code_range(self):
        """``(lowest, highest)`` code."""
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    @property
    def symmetric(self):
        """``True`` when the groups have no minimum (offset)."""
        return self.mins is None

    @property
    def bits_per_weight(self):
        """Storage cost per weight including the float16 scales (and minimums)."""
        per_group = 16 * (1 if self.mins is None else 2)
        return self.bits + per_group / self.group

    def dequantize(self):
        """Return the float32 values, computed as llama.cpp does."""
        n, k = self.shape
        codes = self.codes.astype(np.float32).reshape(n, k // self.group, self.group)
        values = codes * self.scales.astype(np.float32)[..., None]
        if self.mins is not None:
            values = values + self.mins.astype(np.float32)[..., None]
        return values.reshape(n, k)

    def rows(self, index):
        """Return the rows ``index`` (e.g. token ids of an embedding) as a new tensor."""
        return GroupQuantized(self.codes[index], self.bits, self.signed, self.group,
                              self.scales[index],
                              None if self.mins is None else self.mins[index])

    @classmethod
    def from_gguf_blocks(cls, kind, raw, shape):
        """Decode raw GGUF block bytes of type ``kind`` (``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"``).

        Parameters
        ----------
        raw : ndarray of uint8
            The tensor's bytes, ``N * K / 32`` blocks.
        shape : (N, K)

        Raises
        ------
        ValueError
            If the byte count does not match the shape, or ``kind`` is not one of the above.
        """
        n, k = shape
        if k % GGUF_BLOCK:
            raise ValueError(f"{kind} rows must be a multiple of {GGUF_BLOCK}, not {k}")
        layout = {"Q8_0": (2, 32), "Q4_0": (2, 16), "Q4_1": (4, 16)}
        if kind not in layout:
            raise ValueError(f"unsupported GGUF block type {kind}")
        header, payload = layout[kind]
        blocks = n * k // GGUF_BLOCK
        block_bytes = header + payload
        if raw.size != blocks * block_bytes:
            raise ValueError(f"{kind} tensor of shape {shape} needs {blocks * block_bytes} "
                             f"bytes, not {raw.size}")
        raw = raw.reshape(blocks, block_bytes)
        scales = raw[:, 0:2].copy().view(np.float16).reshape(n, k // GGUF_BLOCK)
        mins = None
        if kind == "Q4_1":
            mins = raw[:, 2:4].copy().view(np.float16).reshape(n, k // GGUF_BLOCK)
        data = raw[:, header:]
        if kind == "Q8_0":
            codes = data.view(np.int8).reshape(n, k)
            return cls(np.ascontiguousarray(codes), 8, True, GGUF_BLOCK, scales)
        # 4-bit: byte j holds element j (low nibble) and element j + 16 (high nibble).
        nibbles = np.concatenate([data & 0x0F, data >> 4], axis=1).reshape(n, k)
        if kind == "Q4_0":
            return cls((nibbles.astype(np.int8) - 8), 4, True, GGUF_BLOCK, scales)
        return cls(nibbles.astype(np.uint8), 4, False, GGUF_BLOCK, scales, mins)
