"""Frontends: GGUF and Hugging Face checkpoints load into the same model description; bad or
unsupported inputs give one clear error naming the file and the reason."""

import json

import numpy as np
import pytest
from model_files import TINY, random_tensors, write_gguf, write_hf

from flightgen.compiler.frontends import gguf_to_hf_rows, hf_to_gguf_rows, load_model
from flightgen.compiler.gguf import ModelFileError
from flightgen.isa.weights import GroupQuantized


def test_rope_row_permutation_round_trips():
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(64, 3)
    np.testing.assert_array_equal(hf_to_gguf_rows(gguf_to_hf_rows(w, 4), 4), w)
    # Head 0 in HF order holds rows [x0, x2, ..., x14, x1, x3, ..., x15] of GGUF order.
    hf = gguf_to_hf_rows(w, 4)
    np.testing.assert_array_equal(hf[:16, 0], w[list(range(0, 16, 2)) + list(range(1, 16, 2)), 0])


def test_gguf_loads_quantized_matrices_and_float_norms(tmp_path):
    model = load_model(write_gguf(tmp_path / "m.gguf", matrix_type="Q4_1"))
    assert isinstance(model.tensors["blk.1.ffn_down.weight"], GroupQuantized)
    assert model.tensors["blk.1.ffn_norm.weight"].dtype == np.float32
    assert model.config.tied_embeddings and model.weight("output.weight") is \
        model.tensors["token_embd.weight"]


@pytest.mark.parametrize(("dtype", "shards"), [(np.float32, 1), (np.float16, 2)])
def test_hf_equals_the_same_weights_from_gguf(tmp_path, dtype, shards):
    tensors = {name: value.astype(dtype).astype(np.float32)
               for name, value in random_tensors(TINY).items()}
    from_gguf = load_model(write_gguf(tmp_path / "m.gguf", tensors=tensors, matrix_type="F32"))
    from_hf = load_model(write_hf(tmp_path / "hf", tensors=tensors, dtype=dtype, shards=shards),
                         tokenizer=False)
    assert from_hf.config == TINY
    for name, value in from_gguf.tensors.items():
        np.testing.assert_array_equal(from_hf.tensors[name], value, err_msg=name)


def test_hf_untied_head_and_ignored_buffers(tmp_path):
    config = TINY.__class__(**{**TINY.to_dict(), "tied_embeddings": False})
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
    model = load_model(write_hf(tmp_path / "hf", config, random_tensors(config), extra=extra),
                       tokenizer=False)
    assert not model.config.tied_embeddings
    assert model.weight("output.weight") is model.tensors["output.weight"]


@pytest.mark.parametrize(("change", "message"), [
    ({"arch": "gemma3"}, r"architecture 'gemma3' is not supported \(flightgen reads llama\)$"),
    ({"drop": ("blk.1.ffn_up.weight",)}, r"missing tensor blk\.1\.ffn_up\.weight$"),
    ({"reshape": {"blk.0.attn_norm.weight": (32, 2)}},
     r"tensor blk\.0\.attn_norm\.weight has shape \(32, 2\), the config needs \(64,\)$"),
    ({"pre": "llama-bpe"}, r"pre-tokenizer 'llama-bpe' is not supported"),
])
def test_gguf_errors(tmp_path, change, message):
    path = write_gguf(tmp_path / "m.gguf", **change)
    with pytest.raises(ModelFileError, match=r"m\.gguf: " + message):
        load_model(path)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model_type": "mistral"}, r"model_type 'mistral' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling=.* is not supported$"),
    ({"hidden_size": None}, r"invalid model config \(dim must be a positive integer"),
    ({"num_attention_heads": 5}, r"invalid model config \(dim 64 is not a multiple of n_heads"),
])
def test_hf_config_errors(tmp_path, overrides, message):
    folder = write_hf(tmp_path / "hf", config_overrides=overrides)
    with pytest.raises(ModelFileError, match=message):
        load_model(folder)


def test_hf_missing_config_key(tmp_path):
    folder = write_hf(tmp_path / "hf")
    raw = json.loads((folder / "config.json").read_text())
    del raw["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match=r"config\.json: missing intermediate_size$"):
        load_model(folder)


def test_hf_unexpected_tensor(tmp_path):
    folder = write_hf(tmp_path / "hf", extra={"vision.proj": np.ones(3, np.float32)})
    with pytest.raises(ModelFileError, match=r"unexpected tensor vision\.proj \(not a LLaMA"):
        load_model(folder)


def test_hf_truncated_safetensors(tmp_path):
    folder = write_hf(tmp_path / "hf")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: truncated file \(tensor "):
        load_model(folder)


def test_hf_never_loads_pickles(tmp_path):
    folder = tmp_path / "hf"
    write_hf(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ModelFileError, match=r"no \.safetensors files \(pickled \.bin "
                                             r"checkpoints are never loaded\)$"):
        load_model(folder)


def test_unknown_file_kind(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ModelFileError, match=r"weights\.npz: not a model flightgen reads"):
        load_model(path)
