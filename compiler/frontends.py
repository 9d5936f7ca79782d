"""Model frontends: a GGUF file or a Hugging Face checkpoint folder to a ModelDescription.

:func:`load_model` picks the frontend from the path: a file starting with the GGUF magic, or a
folder holding ``config.json`` and ``*.safetensors`` (sharded checkpoints with
``model.safetensors.index.json`` included). Only the LLaMA architecture is read; anything else
is a :class:`~flightgen.compiler.gguf.ModelFileError` naming the file and the reason.

GGUF quantized tensors (Q8_0, Q4_0, Q4_1) load exactly as
:class:`~flightgen.isa.weights.GroupQuantized`; float tensors become float32.
"""

import json
from pathlib import Path

import numpy as np

from .gguf import GGUFFile, ModelFileError
from .model import LlamaConfig, ModelDescription, expected_shapes
from .safetensors import SafetensorsFile
from .tokenizer import Tokenizer

__all__ = ["load_model", "load_gguf", "load_hf", "hf_to_gguf_rows", "gguf_to_hf_rows"]


def load_model(path, *, tokenizer=True):
    """Load a model from a GGUF file or a Hugging Face checkpoint folder.

    Parameters
    ----------
    path : path-like
    tokenizer : bool
        Also build the tokenizer (a GGUF's own, or the folder's ``tokenizer.json``).

    Raises
    ------
    ModelFileError
        If the path is missing, of an unknown kind, malformed or unsupported.
    """
    path = Path(path)
    if path.is_dir():
        return load_hf(path, tokenizer=tokenizer)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors" or path.name == "config.json":
        return load_hf(path.parent, tokenizer=tokenizer)
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic == b"GGUF" or path.suffix == ".gguf":
        return load_gguf(path, tokenizer=tokenizer)
    raise ModelFileError(f"{path}: not a model flightgen reads (expected a .gguf file or a "
                         "folder with config.json and .safetensors files)")


def _llama_field(gguf, name, kind=int):
    value = gguf.field(f"llama.{name}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelFileError(f"{gguf.path}: llama.{name} is {value!r}, not a number") from None


def load_gguf(path, *, tokenizer=True):
    """Load a LLaMA-architecture GGUF file."""
    gguf = GGUFFile(path)
    arch = gguf.field("general.architecture")
    if arch != "llama":
        raise ModelFileError(f"{gguf.path}: architecture {arch!r} is not supported "
                             "(flightgen reads llama)")
    dim = _llama_field(gguf, "embedding_length")
    n_heads = _llama_field(gguf, "attention.head_count")
    vocab = gguf.field("llama.vocab_size", None)
    if vocab is None:
        vocab = len(gguf.field("tokenizer.ggml.tokens"))
    try:
        config = LlamaConfig(
            dim=dim, n_layers=_llama_field(gguf, "block_count"), n_heads=n_heads,
            n_kv_heads=int(gguf.field("llama.attention.head_count_kv", n_heads)),
            ffn_dim=_llama_field(gguf, "feed_forward_length"), vocab_size=int(vocab),
            context_length=_llama_field(gguf, "context_length"),
            rope_theta=float(gguf.field("llama.rope.freq_base", 10000.0)),
            norm_eps=_llama_field(gguf, "attention.layer_norm_rms_epsilon", float),
            tied_embeddings="output.weight" not in gguf.tensors)
    except ValueError as error:
        raise ModelFileError(f"{gguf.path}: invalid model config ({error})") from None
    rope_dims = gguf.field("llama.rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise ModelFileError(f"{gguf.path}: partial rotary embedding ({rope_dims} of "
                             f"{config.head_dim} dimensions) is not supported")
    scaling = gguf.field("llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ModelFileError(f"{gguf.path}: RoPE scaling {scaling!r} is not supported")
    tensors = {name: _as_float32(gguf.tensor(name)) for name in gguf.tensors}
    return ModelDescription(config, tensors,
                            Tokenizer.from_gguf(gguf) if tokenizer else None, gguf.path)


def _as_float32(tensor):
    if isinstance(tensor, np.ndarray):
        return tensor.astype(np.float32, copy=False)
    return tensor


# Hugging Face LLaMA names -> GGUF names ({i} is the layer).
_HF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
_HF_LAYER = {"input_layernorm.weight": "attn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
# Buffers some exports include; recomputed from the config, never read.
_HF_IGNORED = ("self_attn.rotary_emb.inv_freq",)


def hf_to_gguf_rows(weight, heads):
    """Permute q/k projection rows from HF rotate-half order to GGUF adjacent-pair order."""
    out, inputs = weight.shape
    half = out // heads // 2
    return weight.reshape(heads, 2, half, inputs).swapaxes(1, 2).reshape(out, inputs)


def gguf_to_hf_rows(weight, heads):
    """Inverse of :func:`hf_to_gguf_rows`."""
    out, inputs = weight.shape
    half = out // heads // 2
    return weight.reshape(heads, half, 2, inputs).swapaxes(1, 2).reshape(out, inputs)


def _hf_config(folder):
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{folder}: no config.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error})") from None
    model_type = raw.get("model_type")
    if model_type != "llama":
        raise ModelFileError(f"{path}: model_type {model_type!r} is not supported "
                             "(flightgen reads llama)")
    for key, allowed in (("hidden_act", ("silu", None)), ("rope_scaling", (None,)),
                         ("attention_bias", (False, None)), ("mlp_bias", (False, None))):
        if raw.get(key) not in allowed:
            raise ModelFileError(f"{path}: {key}={raw.get(key)!r} is not supported")
    try:
        config = LlamaConfig(
            dim=raw["hidden_size"], n_layers=raw["num_hidden_layers"],
            n_heads=raw["num_attention_heads"],
            n_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
            ffn_dim=raw["intermediate_size"], vocab_size=raw["vocab_size"],
            context_length=raw.get("max_position_embeddings", 2048),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)))
    except KeyError as error:
        raise ModelFileError(f"{path}: missing {error.args[0]}") from None
    except ValueError as error:
        raise ModelFileError(f"{path}: invalid model config ({error})") from None
    head_dim = raw.get("head_dim")
    if head_dim not in (None, config.head_dim):
        raise ModelFileError(f"{path}: head_dim {head_dim} differs from hidden_size / "
                             "num_attention_heads, which flightgen does not support")
    return config, raw


def _hf_files(folder):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (KeyError, json.JSONDecodeError) as error:
            raise ModelFileError(f"{index}: malformed index ({error})") from None
        files = sorted(set(weight_map.values()))
        return [folder / name for name in files]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{folder}: no .safetensors files (pickled .bin checkpoints "
                             "are never loaded)")
    return files


def load_hf(folder, *, tokenizer=True):
    """Load a Hugging Face LLaMA checkpoint folder (config.json + safetensors)."""
    folder = Path(folder)
    config, raw = _hf_config(folder)
    tensors = {}
    for file in _hf_files(folder):
        st = SafetensorsFile(file)
        for name in st.shapes:
            tensors[_gguf_name(name, folder)] = st.tensor(name)
    tensors.pop(None, None)
    shapes = expected_shapes(config)
    for name, heads in (("attn_q", config.n_heads), ("attn_k", config.n_kv_heads)):
        for i in range(config.n_layers):
            key = f"blk.{i}.{name}.weight"
            if key in tensors and tensors[key].shape == shapes[key]:  # else reported below
                tensors[key] = hf_to_gguf_rows(tensors[key], heads)
    if config.tied_embeddings:
        tensors.pop("output.weight", None)  # some exports store the tied copy too
    for name, tensor in tensors.items():
        if tensor.dtype != np.float32:
            raise ModelFileError(f"{folder}: tensor {name} is {tensor.dtype}, not a float")
    tok = None
    if tokenizer and (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(folder / "tokenizer.json", raw.get("bos_token_id"),
                                  raw.get("eos_token_id"))
    return ModelDescription(config, tensors, tok, folder)


def _gguf_name(name, folder):
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        if parts[3] in _HF_IGNORED:
            return None
        if parts[3] in _HF_LAYER:
            return f"blk.{parts[2]}.{_HF_LAYER[parts[3]]}"
    raise ModelFileError(f"{folder}: unexpected tensor {name} (not a LLaMA checkpoint?)")
