"""Group-quantized weights: GGUF blocks decode exactly; invalid tensors are refused."""

import gguf
import numpy as np
import pytest

from flightgen.isa.weights import GroupQuantized


def block(scale, payload, minimum=None):
    header = np.float16(scale).tobytes() + (b"" if minimum is None else
                                            np.float16(minimum).tobytes())
    return np.frombuffer(header + bytes(payload), dtype=np.uint8)


def test_q4_nibble_layout_by_hand():
    # Byte j carries element j in its low nibble and element j + 16 in its high nibble.
    payload = [j | ((15 - j) << 4) for j in range(16)]
    q41 = GroupQuantized.from_gguf_blocks("Q4_1", block(0.5, payload, -2.0), (1, 32))
    np.testing.assert_array_equal(q41.codes[0], list(range(16)) + list(range(15, -1, -1)))
    np.testing.assert_array_equal(q41.dequantize()[0], 0.5 * q41.codes[0] - 2.0)
    q40 = GroupQuantized.from_gguf_blocks("Q4_0", block(2.0, payload), (1, 32))
    np.testing.assert_array_equal(q40.codes[0], q41.codes[0].astype(np.int8) - 8)
    assert (q40.signed, q41.signed, q40.symmetric, q41.symmetric) == (True, False, True, False)


def test_q8_0_by_hand():
    payload = np.arange(-16, 16, dtype=np.int8).tobytes()
    q8 = GroupQuantized.from_gguf_blocks("Q8_0", block(0.25, payload), (1, 32))
    np.testing.assert_array_equal(q8.codes[0], np.arange(-16, 16))
    np.testing.assert_array_equal(q8.dequantize()[0], 0.25 * np.arange(-16, 16))
    assert q8.bits_per_weight == 8.5


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_matches_the_gguf_package(kind):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((8, 128)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf.quants.quantize(values, qtype)
    ours = GroupQuantized.from_gguf_blocks(kind, raw.reshape(-1), values.shape)
    reference = gguf.quants.dequantize(raw, qtype)
    assert ours.dequantize().tobytes() == reference.astype(np.float32).tobytes()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"bits": 9}, ValueError, r"^code width must be 2 to 8 bits, not 9$"),
    ({"group": 48}, ValueError, r"^group size 48 does not divide the 64 inputs$"),
    ({"codes": np.full((2, 64), 8, np.int8)}, ValueError,
     r"^codes must lie in \[-8, 7\] for 4-bit signed codes$"),
    ({"codes": np.zeros((2, 64), np.uint8)}, TypeError,
     r"^signed codes must be int8, not uint8$"),
    ({"scales": np.ones((2, 2), np.float32)}, ValueError,
     r"^scales must be float16 of shape \(2, 2\), not float32 \(2, 2\)$"),
])
def test_rejects_invalid_tensors(kwargs, error, message):
    args = {"codes": np.zeros((2, 64), np.int8), "bits": 4, "signed": True, "group": 32,
            "scales": np.ones((2, 2), np.float16)}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        GroupQuantized(**args)


def test_rejects_wrong_byte_count():
    message = r"^Q8_0 tensor of shape \(1, 32\) needs 34 bytes, not 33$"
    with pytest.raises(ValueError, match=message):
        GroupQuantized.from_gguf_blocks("Q8_0", np.zeros(33, np.uint8), (1, 32))


def test_rows_selects_embedding_rows():
    rng = np.random.default_rng(2)
    values = rng.standard_normal((10, 64)).astype(np.float32)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_1).reshape(-1)
    tensor = GroupQuantized.from_gguf_blocks("Q4_1", raw, values.shape)
    np.testing.assert_array_equal(tensor.rows([3, 7]).dequantize(), tensor.dequantize()[[3, 7]])
