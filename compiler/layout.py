"""Where a decode step finds its data: the INT8 KV cache's layout in HBM and the length
registers the host sets for each step.

The compiler lays caches out with :class:`KVLayout`; the host computes ``r1`` .. ``r7`` with
:func:`decode_registers` before each step. Both sides import these definitions.
"""

import numpy as np

from ..isa.numerics import ACT_GROUP

__all__ = ["KVLayout", "decode_registers", "scale_word"]


class KVLayout:
    """Where a decode step finds its INT8 KV cache in HBM, for one KV head.

    * Keys: the matrix engine's MV weight rows (one row per token, K = the head size padded to
      32): row group ``g`` (``2 V`` tokens) at ``g * key_group`` bytes.
    * Values, transposed: one MV weight row per head dimension, K = tokens; row group ``g``
      (``2 V`` dimensions) at ``g * value_group`` bytes, room for ``capacity`` tokens.
    * Scale words (one 32-bit word per token) of keys and of values, in vector beats.
    """

    def __init__(self, config, head_dim, capacity):
        g = config.geometry
        if capacity % ACT_GROUP or head_dim % g.lanes or _pad(head_dim) > g.row_codes:
            raise ValueError(f"capacity must be a multiple of {ACT_GROUP}, the head size a "
                             f"multiple of {g.lanes} and at most {g.row_codes}")
        self.config, self.head_dim, self.capacity = config, head_dim, capacity
        self.beat = config.beat_lines(g.weight_bits) * config.line_bytes  # weight beat stride
        self.key_steps = _pad(head_dim) // g.chain
        self.key_group = self.key_steps * self.beat
        self.value_steps = capacity // g.chain
        self.value_group = self.value_steps * self.beat
        self.key_bytes = capacity // g.lanes * self.key_group
        self.value_bytes = head_dim // g.lanes * self.value_group
        self.scale_bytes = -(-capacity // config.lanes) * config.line_bytes

    def key_offset(self, token):
        """Byte of slot 0 of a token's key row (the STORE pattern adds ``2 i``, steps)."""
        g = self.config.geometry
        group, within = divmod(token, g.lanes)
        v, j = divmod(within, 2)
        return group * self.key_group + 2 * g.chain * v + j

    def value_offset(self, token):
        g = self.config.geometry
        step, slot = divmod(token, g.chain)
        return step * self.beat + 2 * slot

    def scale_offset(self, token):
        lanes = self.config.lanes
        return (token // lanes) * self.config.line_bytes + (token % lanes) * 4

    def addresses(self, token):
        """Byte offsets of one token's data in each part: ``k`` (the padded key's codes),
        ``v`` (the value's codes), ``ks`` and ``vs`` (the scale words' 4 bytes)."""
        g = self.config.geometry
        slots = np.arange(_pad(self.head_dim))
        step, slot = divmod(slots, g.chain)
        d = np.arange(self.head_dim)
        group, within = divmod(d, g.lanes)
        v, j = divmod(within, 2)
        words = self.scale_offset(token) + np.arange(4)
        return {"k": self.key_offset(token) + step * self.beat + 2 * slot,
                "v": group * self.value_group + self.value_offset(token) + 2 * g.chain * v + j,
                "ks": words, "vs": words}

    def write_token(self, images, bases, token, k_codes, v_codes, k_word, v_word):
        """Put one token's codes and scale words where the program's STOREs would (the
        parts on port 1 at ``bases``)."""
        key = np.zeros(_pad(self.head_dim), np.int64)
        key[:len(k_codes)] = k_codes
        values = {"k": key, "v": np.asarray(v_codes),
                  "ks": np.frombuffer(int(k_word).to_bytes(4, "little"), np.uint8),
                  "vs": np.frombuffer(int(v_word).to_bytes(4, "little"), np.uint8)}
        for part, offsets in self.addresses(token).items():
            images[1][bases[part] + offsets] = np.asarray(values[part], np.int64) & 0xFF

    def read_token(self, memories, token):
        """One token's ``(k codes, v codes, k word, v word)`` from ``memories`` (part ->
        ``(bytes array, base)``)."""
        out = {}
        for part, offsets in self.addresses(token).items():
            memory, base = memories[part]
            out[part] = memory[base + offsets]
        return (out["k"][:self.head_dim].view(np.int8).astype(np.int64),
                out["v"].view(np.int8).astype(np.int64),
                int.from_bytes(out["ks"].tobytes(), "little"),
                int.from_bytes(out["vs"].tobytes(), "little"))


def _pad(head_dim):
    return -(-head_dim // ACT_GROUP) * ACT_GROUP


def decode_registers(layout, position):
    """The length registers ``r1`` .. ``r7`` of a decode step at ``position`` (the cache then
    holds ``L = position + 1`` tokens), as the host sets them: ``L``, ``ceil(L / 2V)``, the
    key's byte offset in the key cache, the value's byte offset in the value cache,
    ``position``, ``ceil(L / 32)``, the scale word's byte offset."""
    g = layout.config.geometry
    length = position + 1
    return (length, -(-length // g.lanes), layout.key_offset(position),
            layout.value_offset(position), position, -(-length // ACT_GROUP),
            layout.scale_offset(position))


def scale_word(mult, exp):
    """A 32-bit scale word: ``mult`` in bits 0-15, ``exp`` (signed) in bits 16-23."""
    return (int(mult) & 0xFFFF) | ((int(exp) & 0xFF) << 16)
