"""Greedy generation over any backend that has ``new_cache(capacity)`` and
``forward(tokens, cache) -> logits``."""

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Generation", "greedy", "TextStream", "step_positions"]


def step_positions(tokens, cache, vocab_size):
    """Check a forward step for a backend and return ``(tokens, positions)`` as int64 arrays.

    Raises ValueError if the tokens do not fit the cache or lie outside the vocabulary.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    start, end = cache.length, cache.length + len(tokens)
    if end > cache.capacity:
        raise ValueError(f"cache holds {cache.capacity} tokens; {end} needed")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    return tokens, np.arange(start, end)


@dataclass
class Generation:
    """Result of :func:`greedy`.

    Members
    -------
    prompt : list of int
    tokens : list of int
        Generated ids (the end-of-sequence token included if it was produced).
    prefill_s, decode_s : float
        Wall time of the prompt pass and of the decode steps.
    """

    prompt: list
    tokens: list = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0


def greedy(backend, prompt, max_tokens, *, eos_id=None, on_token=None):
    """Generate up to ``max_tokens`` tokens after ``prompt``, always taking the top logit
    (the lowest id among equal maxima).

    ``on_token(id)`` is called as each token is produced. Generation stops early after
    ``eos_id``.
    """
    if not prompt:
        raise ValueError("the prompt must contain at least one token")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must not be negative, not {max_tokens}")
    result = Generation(list(prompt))
    cache = backend.new_cache(len(prompt) + max_tokens)
    started = time.monotonic()
    logits = backend.forward(prompt, cache)
    result.prefill_s = time.monotonic() - started
    started = time.monotonic()
    for step in range(max_tokens):
        token = int(np.argmax(logits[-1]))
        result.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token == eos_id or step == max_tokens - 1:
            break
        logits = backend.forward([token], cache)
    result.decode_s = time.monotonic() - started
    return result


class TextStream:
    """Turn a growing list of token ids into text pieces, holding back incomplete UTF-8."""

    def __init__(self, tokenizer):
        self._tokenizer, self._ids, self._emitted = tokenizer, [], ""

    def push(self, token):
        """Add a token; return the new text that is now complete."""
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        new, self._emitted = text[len(self._emitted):], text
        return new
