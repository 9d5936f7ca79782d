"""Tokenizers built from what a model file carries (no hub download).

GGUF files with ``tokenizer.ggml.model = gpt2`` carry a byte-level BPE vocabulary and merge
list; :meth:`Tokenizer.from_gguf` rebuilds it with the pre-tokenizer named by
``tokenizer.ggml.pre``. Pre-tokenizers flightgen has not matched against llama.cpp are refused
with a clear error rather than tokenized approximately. Hugging Face checkpoints carry a
``tokenizer.json``, loaded as it is (:meth:`Tokenizer.from_file`).
"""

import numpy as np

from .gguf import ModelFileError

__all__ = ["Tokenizer"]

_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_start|>
# tokenizer.ggml.pre values whose pre-tokenization flightgen reproduces.
_PRE_TOKENIZERS = ("smollm", "gpt2")


class Tokenizer:
    """Encode text to token ids and decode ids back to text.

    Members
    -------
    bos_id, eos_id : int or None
        Begin- and end-of-sequence tokens.
    add_bos : bool
        Whether :meth:`encode` prepends ``bos_id`` (from the model file).
    vocab_size : int
    """

    def __init__(self, backend, bos_id=None, eos_id=None, add_bos=False):
        self._backend = backend
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_gguf(cls, gguf):
        """Build the tokenizer of a :class:`~flightgen.compiler.gguf.GGUFFile`.

        Raises
        ------
        ModelFileError
            If the tokenizer type or pre-tokenizer is not supported, or fields are missing.
        """
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        kind = gguf.field("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelFileError(f"{gguf.path}: tokenizer type {kind!r} is not supported "
                                 "(flightgen reads byte-level BPE, tokenizer.ggml.model=gpt2)")
        pre = gguf.field("tokenizer.ggml.pre", "gpt2")
        if pre not in _PRE_TOKENIZERS:
            raise ModelFileError(f"{gguf.path}: pre-tokenizer {pre!r} is not supported "
                                 f"(supported: {', '.join(_PRE_TOKENIZERS)})")
        tokens = list(gguf.field("tokenizer.ggml.tokens"))
        merges = [tuple(merge.split(" ", 1)) for merge in gguf.field("tokenizer.ggml.merges")]
        if any(len(merge) != 2 for merge in merges):
            raise ModelFileError(f"{gguf.path}: malformed tokenizer.ggml.merges entry")
        vocab = {token: index for index, token in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ModelFileError(f"{gguf.path}: tokenizer.ggml.tokens has duplicate tokens")
        backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        types = np.asarray(gguf.field("tokenizer.ggml.token_type", np.ones(len(tokens))))
        specials = [AddedToken(tokens[i], special=True, normalized=False)
                    for i in np.nonzero(types == _CONTROL)[0]]
        backend.add_special_tokens(specials)
        return cls(backend,
                   bos_id=gguf.field("tokenizer.ggml.bos_token_id", None),
                   eos_id=gguf.field("tokenizer.ggml.eos_token_id", None),
                   add_bos=bool(gguf.field("tokenizer.ggml.add_bos_token", False)))

    @classmethod
    def from_file(cls, path, bos_id=None, eos_id=None, add_bos=False):
        """Load a Hugging Face ``tokenizer.json``."""
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_file(str(path))
        except Exception as error:  # the Rust library raises a plain Exception
            raise ModelFileError(f"{path}: not a readable tokenizer.json ({error})") from None
        return cls(backend, bos_id, eos_id, add_bos)

    @classmethod
    def from_string(cls, text, bos_id=None, eos_id=None, add_bos=False):
        """Rebuild a tokenizer from :meth:`to_string` (as a model binary stores it)."""
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_str(text)
        except Exception as error:  # the Rust library raises a plain Exception
            raise ModelFileError(f"not a readable tokenizer ({error})") from None
        return cls(backend, bos_id, eos_id, add_bos)

    def to_string(self):
        """The tokenizer as Hugging Face ``tokenizer.json`` text."""
        return self._backend.to_str()

    @property
    def special(self):
        """``bos_id``, ``eos_id`` and ``add_bos`` as a dict."""
        return {"bos_id": self.bos_id, "eos_id": self.eos_id, "add_bos": self.add_bos}

    def encode(self, text):
        """Return the token ids of ``text`` (with ``bos_id`` first when ``add_bos``)."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids):
        """Return the text of ``ids``, special tokens included."""
        return self._backend.decode(list(ids), skip_special_tokens=False)
