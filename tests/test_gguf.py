"""flightgen's GGUF reader against the independent `gguf` package, and on malformed files."""

import gguf
import numpy as np
import pytest
from model_files import write_gguf

from flightgen.compiler.gguf import GGUFFile, ModelFileError
from flightgen.isa.weights import GroupQuantized


@pytest.mark.parametrize("matrix_type", ["Q8_0", "Q4_0", "Q4_1", "F16", "F32"])
def test_tensors_equal_the_gguf_package(tmp_path, matrix_type):
    path = write_gguf(tmp_path / "m.gguf", matrix_type=matrix_type)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for tensor in theirs.tensors:
        mine = ours.tensor(tensor.name)
        values = mine.dequantize() if isinstance(mine, GroupQuantized) else mine
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert values.shape == reference.shape
        np.testing.assert_array_equal(values.astype(np.float32), reference)


def test_the_default_model_equals_the_gguf_package(default_model_path):
    path = default_model_path
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert ours.version == 3 and len(ours.tensors) == 272
    for key in ("general.architecture", "llama.block_count", "llama.embedding_length",
                "llama.attention.head_count_kv", "tokenizer.ggml.pre"):
        assert ours.metadata[key] == theirs.fields[key].contents()
    tokens = theirs.fields["tokenizer.ggml.tokens"].contents()
    assert ours.metadata["tokenizer.ggml.tokens"] == tokens
    kinds = {}
    for tensor in theirs.tensors:
        mine = ours.tensor(tensor.name)
        kinds[ours.tensors[tensor.name].kind] = kinds.get(ours.tensors[tensor.name].kind, 0) + 1
        values = mine.dequantize() if isinstance(mine, GroupQuantized) else mine
        np.testing.assert_array_equal(values, gguf.quants.dequantize(tensor.data,
                                                                     tensor.tensor_type))
    assert kinds == {"Q4_1": 210, "Q8_0": 1, "F32": 61}  # as documented in models.md


def test_not_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFileError, match=r"x\.gguf: not a GGUF file \(no GGUF magic"):
        GGUFFile(path)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.gguf: empty file, not a GGUF model$"):
        GGUFFile(tmp_path / "empty.gguf")
    with pytest.raises(ModelFileError, match=r"nothing\.gguf: no such file$"):
        GGUFFile(tmp_path / "nothing.gguf")


def test_unsupported_version(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", version=7)
    with pytest.raises(ModelFileError, match=r"unsupported GGUF version 7 \(flightgen reads "
                                             r"versions 2 and 3\)$"):
        GGUFFile(path)


@pytest.mark.parametrize("keep", [3, 20, 1000, 0.5, -1])
def test_truncated_anywhere_is_reported(tmp_path, keep):
    whole = write_gguf(tmp_path / "m.gguf").read_bytes()
    cut = int(len(whole) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[:cut])
    with pytest.raises(ModelFileError, match=r"cut\.gguf: (truncated file|not a GGUF file)"):
        GGUFFile(path)


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    raw = np.zeros((4, 144 * 2), np.uint8)  # two Q4_K blocks (256 elements, 144 bytes) per row
    writer.add_tensor("w", raw, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match=r"tensor w is Q4_K, which flightgen does not read "
                                             r"\(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1\)$"):
        GGUFFile(path)


def test_missing_tensor_and_metadata(tmp_path):
    file = GGUFFile(write_gguf(tmp_path / "m.gguf"))
    with pytest.raises(ModelFileError, match=r"m\.gguf: missing tensor nope$"):
        file.tensor("nope")
    with pytest.raises(ModelFileError, match=r"m\.gguf: missing metadata llama\.nope$"):
        file.field("llama.nope")
