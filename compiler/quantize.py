"""Weight quantization: the formats the compiler stores weights in.

One definition serves the compiler and the quantized reference
(:class:`flightgen.sim.quant_model.QuantLlama`), so the binary's weights are exactly the
reference's.
"""

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..isa.numerics import mul_round_shift
from ..isa.special import FX_FRAC, saturate_fx
from ..isa.weights import GroupQuantized

__all__ = ["QuantConfig", "quantize_tensor", "parse_format", "embedding_rows"]

_FORMAT_RE = re.compile(r"^(int8|int4)-g(32|64|128)-(sym|asym)$")


@dataclass(frozen=True)
class QuantConfig:
    """How the model's weights are quantized (activations are always INT8 per token).

    Members
    -------
    weights : str
        ``"gguf"``: the model's own quantized tensors, exactly (float matrices become INT8,
        symmetric groups of 32). ``"int8"`` or ``"int4"``: re-quantize every matrix from its
        float values.
    group : int
        Group size along K for re-quantized weights (32..128, a power of two).
    symmetric : bool
        Symmetric groups (no minimum) for re-quantized weights.
    """

    weights: str = "gguf"
    group: int = 32
    symmetric: bool = True

    def __post_init__(self):
        if self.weights not in ("gguf", "int8", "int4"):
            raise ValueError(f"weights must be gguf, int8 or int4, not {self.weights!r}")
        if self.group not in (32, 64, 128):
            raise ValueError(f"group must be 32, 64 or 128, not {self.group!r}")

    @property
    def label(self):
        """Short human-readable name, e.g. ``"W-gguf A8"`` or ``"W4 g128 sym A8"``."""
        if self.weights == "gguf":
            return "W-gguf A8"
        kind = "sym" if self.symmetric else "asym"
        return f"W{self.weights[3:]} g{self.group} {kind} A8"

    def to_dict(self):
        return asdict(self)


def quantize_tensor(tensor, config):
    """``tensor`` (float matrix or :class:`GroupQuantized`) in the format ``config`` names."""
    if config.weights == "gguf":
        if isinstance(tensor, GroupQuantized):
            return tensor
        return GroupQuantized.from_float(tensor, 8, 32, True)
    values = tensor.dequantize() if isinstance(tensor, GroupQuantized) else tensor
    return GroupQuantized.from_float(values, 8 if config.weights == "int8" else 4,
                                     config.group, config.symmetric)


def parse_format(text):
    """``"gguf"`` or ``"int4-g64-sym"`` (bits, group, sym/asym) to a :class:`QuantConfig`;
    ValueError otherwise."""
    if text == "gguf":
        return QuantConfig("gguf")
    found = _FORMAT_RE.match(text)
    if not found:
        raise ValueError(f"configuration must be gguf or like int4-g64-sym, not {text!r}")
    return QuantConfig(found[1], int(found[2]), found[3] == "sym")


def embedding_rows(embedding, tokens, terms=None):
    """FX rows ``tokens`` of a group-quantized embedding table: the exact values, rounded once
    to FX. ``terms`` is ``embedding.exact_terms()`` when the caller has it."""
    d, m, row_exp = embedding.exact_terms() if terms is None else terms
    tokens = np.asarray(tokens)
    group = embedding.group
    value = embedding.codes[tokens].astype(np.int64) * np.repeat(d[tokens], group, axis=1)
    if m is not None:
        value = value + np.repeat(m[tokens], group, axis=1)
    return saturate_fx(mul_round_shift(value, 1, -(row_exp[tokens][:, None] + FX_FRAC)))
