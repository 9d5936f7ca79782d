"""Accuracy of quantized configurations against the float model, on a text.

Teacher-forced over the text's tokens: at every position both models see the true prefix.
Reported per configuration: next-token top-1 agreement of the quantized reference with the
float model, and the perplexity of each on the text.
"""

import importlib.resources
from dataclasses import asdict, dataclass

import numpy as np

from ..compiler.quantize import parse_format
from .float_model import FloatLlama
from .quant_model import QuantConfig, QuantLlama

__all__ = ["EvalRow", "DEFAULT_CONFIGS", "parse_config", "shipped_text", "logits_over",
           "perplexity", "evaluate", "as_json"]

#: The configurations ``flightgen eval`` reports by default: the GGUF weights exactly, then
#: re-quantized INT8, and two INT4 variants (the second, symmetric with groups of 64, harsher).
DEFAULT_CONFIGS = (QuantConfig("gguf"), QuantConfig("int8", 32, True),
                   QuantConfig("int4", 32, False), QuantConfig("int4", 64, True))

#: ``"gguf"`` or ``"int4-g64-sym"`` to a QuantConfig.
parse_config = parse_format


def shipped_text():
    """The evaluation text that ships with flightgen (an original passage, 458 SmolLM2
    tokens)."""
    return importlib.resources.files("flightgen.sim").joinpath("data/eval_text.txt").read_text()


@dataclass(frozen=True)
class EvalRow:
    """One configuration's results.

    Members
    -------
    config : str
    tokens : int
        Predicted positions.
    top1_agreement : float
        Fraction of positions where the quantized and float models pick the same next token.
    perplexity_float, perplexity_quant : float
    top1_text_float, top1_text_quant : float
        Fraction of positions where each model's top token is the text's next token.
    """

    config: str
    tokens: int
    top1_agreement: float
    perplexity_float: float
    perplexity_quant: float
    top1_text_float: float
    top1_text_quant: float


def logits_over(backend, tokens, chunk=64, progress=None):
    """Logits of every position, running ``tokens`` in chunks through one cache."""
    cache = backend.new_cache(len(tokens))
    parts = []
    for start in range(0, len(tokens), chunk):
        parts.append(backend.forward(tokens[start:start + chunk], cache))
        if progress is not None:
            progress(min(start + chunk, len(tokens)), len(tokens))
    return np.concatenate(parts)


def perplexity(logits, targets):
    """``exp(mean negative log-likelihood)`` of ``targets`` under float64 ``logits``."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(targets)), targets].mean()))


def evaluate(model, tokens, configs=DEFAULT_CONFIGS, progress=None):
    """Evaluate each configuration on ``tokens``; returns a list of :class:`EvalRow`.

    ``progress(label, done, total)`` is called as chunks finish.
    """
    tokens = list(tokens)
    if len(tokens) < 2:
        raise ValueError("the text must have at least 2 tokens")
    targets = np.asarray(tokens[1:])

    def report(label):
        return None if progress is None else (lambda done, total: progress(label, done, total))

    float_logits = logits_over(FloatLlama(model), tokens, progress=report("float32"))[:-1]
    float_top = float_logits.argmax(axis=-1)
    float_ppl = perplexity(float_logits, targets)
    rows = []
    for config in configs:
        quant = logits_over(QuantLlama(model, config), tokens, progress=report(config.label))
        quant = quant[:-1]
        quant_top = quant.argmax(axis=-1)
        rows.append(EvalRow(
            config=config.label, tokens=len(targets),
            top1_agreement=float((quant_top == float_top).mean()),
            perplexity_float=float_ppl,
            perplexity_quant=perplexity(quant / 65536.0, targets),
            top1_text_float=float((float_top == targets).mean()),
            top1_text_quant=float((quant_top == targets).mean())))
    return rows


def as_json(rows, **context):
    """Rows plus context (model, text) as a JSON-serialisable dict."""
    return {**context, "results": [asdict(row) for row in rows]}
