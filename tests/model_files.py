"""Small synthetic LLaMA models written with independent writers (the `gguf` and `safetensors`
packages), for testing flightgen's own readers."""

import json

import gguf
import numpy as np
from safetensors.numpy import save_file

from flightgen.compiler.frontends import gguf_to_hf_rows
from flightgen.compiler.model import LlamaConfig, expected_shapes

TINY = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=260,
                   context_length=128, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=True)


def byte_level_vocab():
    """GPT-2 byte-level tokens for the 256 bytes, a few merges, and two control tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    tokens = ["<|endoftext|>", "<|im_start|>"] + [chars[b] for b in range(256)]
    merges = ["Ġ t", "h e"]
    tokens += ["Ġt", "he"]
    types = [3, 3] + [1] * 256 + [1, 1]
    return tokens, merges, types


def random_tensors(config, seed=0):
    """Float32 tensors in GGUF layout for ``config``."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            tensors[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return tensors


def write_gguf(path, config=TINY, tensors=None, *, matrix_type="Q4_1", arch="llama",
               pre="gpt2", drop=(), reshape=None, version=None):
    """Write a GGUF model; matrices in ``matrix_type`` (Q8_0, Q4_0, Q4_1, F16 or F32)."""
    tensors = dict(tensors or random_tensors(config))
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    tokens, merges, types = byte_level_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    for name, value in tensors.items():
        if name in drop:
            continue
        matrix = value.ndim == 2  # decided before any reshape, so norms stay float
        if reshape and name in reshape:
            value = value.reshape(reshape[name])
        if matrix and matrix_type not in ("F32", "F16"):
            qtype = gguf.GGMLQuantizationType[matrix_type]
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        elif matrix and matrix_type == "F16":
            writer.add_tensor(name, value.astype(np.float16))
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if version is not None:
        data = bytearray(path.read_bytes())
        data[4:8] = np.uint32(version).tobytes()
        path.write_bytes(bytes(data))
    return path


# GGUF name -> Hugging Face name (the inverse of the frontend's mapping, written out here).
def hf_name(name):
    top = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, layer, rest = name.split(".", 2)
    layer_names = {"attn_norm.weight": "input_layernorm.weight",
                   "attn_q.weight": "self_attn.q_proj.weight",
                   "attn_k.weight": "self_attn.k_proj.weight",
                   "attn_v.weight": "self_attn.v_proj.weight",
                   "attn_output.weight": "self_attn.o_proj.weight",
                   "ffn_norm.weight": "post_attention_layernorm.weight",
                   "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                   "ffn_down.weight": "mlp.down_proj.weight"}
    return f"model.layers.{layer}.{layer_names[rest]}"


def write_hf(folder, config=TINY, tensors=None, *, dtype=np.float32, shards=1, extra=None,
             config_overrides=None):
    """Write a Hugging Face LLaMA checkpoint folder from GGUF-layout float tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors or random_tensors(config)
    hf = {}
    for name, value in tensors.items():
        if name.endswith("attn_q.weight"):
            value = gguf_to_hf_rows(value, config.n_heads)
        elif name.endswith("attn_k.weight"):
            value = gguf_to_hf_rows(value, config.n_kv_heads)
        hf[hf_name(name)] = np.ascontiguousarray(value.astype(dtype))
    hf.update(extra or {})
    names = sorted(hf)
    parts = [names[i::shards] for i in range(shards)]
    if shards == 1:
        save_file(hf, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for index, part in enumerate(parts):
            file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: hf[n] for n in part}, str(folder / file))
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map":
                                                                         weight_map}))
    raw = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
           "hidden_size": config.dim, "num_hidden_layers": config.n_layers,
           "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
           "intermediate_size": config.ffn_dim, "vocab_size": config.vocab_size,
           "max_position_embeddings": config.context_length, "rope_theta": config.rope_theta,
           "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tied_embeddings,
           "hidden_act": "silu", "rope_scaling": None}
    raw.update(config_overrides or {})
    (folder / "config.json").write_text(json.dumps(raw))
    return folder
