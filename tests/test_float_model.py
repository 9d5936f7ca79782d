"""The float reference on the real default model, the RoPE convention against an independent
rotate-half implementation, greedy generation and text streaming."""

import numpy as np
import pytest
from model_files import TINY, random_tensors, write_gguf, write_hf

from flightgen.compiler.frontends import gguf_to_hf_rows, load_model
from flightgen.sim.float_model import FloatLlama
from flightgen.sim.generate import TextStream, greedy

# Published in shared/reference/models.md (HF transformers, fp32, on the same GGUF):
# "The capital of France is" -> [504, 3575, 282, 4649, 314]; top next token " Paris" with logit
# 17.37; greedy continuation ids 7042, 30, 198, 198, 504, 2988, 314, 42.
PROMPT_IDS = [504, 3575, 282, 4649, 314]
GREEDY_IDS = [7042, 30, 198, 198, 504, 2988, 314, 42]


def test_tokenizer_matches_hugging_face(smollm2):
    tok = smollm2.tokenizer
    assert tok.encode("The capital of France is") == PROMPT_IDS
    assert tok.encode("<|im_start|>user") == [1, 4093]  # control tokens stay whole
    text = "Héllo wörld 1234, naïve café ✓"
    assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)


def test_paris_and_the_published_greedy_continuation(smollm2):
    model = FloatLlama(smollm2)
    result = greedy(model, PROMPT_IDS, len(GREEDY_IDS))
    assert result.tokens == GREEDY_IDS
    logits = model.forward(PROMPT_IDS, model.new_cache(8))
    # models.md gives the logit to 2 decimals; float32 summation order differs from torch by
    # at most ~3e-5 there, so the published value must agree to half a unit in the last digit.
    assert abs(float(logits[-1, 7042]) - 17.37) <= 0.005 + 1e-4


def test_incremental_decode_equals_full_forward(smollm2):
    model = FloatLlama(smollm2)
    ids = PROMPT_IDS + GREEDY_IDS
    full = model.forward(ids, model.new_cache(len(ids)))
    cache = model.new_cache(len(ids))
    model.forward(ids[:5], cache)
    steps = np.stack([model.forward([t], cache)[-1] for t in ids[5:]])
    # Same arithmetic, but BLAS may sum a one-row matmul in another order than a 13-row one:
    # float32 reassociation over K <= 1536 terms through 30 layers. Observed 4e-5 on logits of
    # magnitude ~20; 1e-3 allows 25x that and is still far below any decision-relevant gap.
    np.testing.assert_allclose(steps, full[5:], atol=1e-3, rtol=0)
    assert (steps.argmax(-1) == full[5:].argmax(-1)).all()


def test_rope_matches_hf_rotate_half(tmp_path):
    """Our adjacent-pair RoPE on GGUF rows equals HF's rotate-half RoPE on HF rows."""
    model = load_model(write_gguf(tmp_path / "f32.gguf", matrix_type="F32"), tokenizer=False)
    ours = FloatLlama(model)
    c, rng = TINY, np.random.default_rng(4)
    h = rng.standard_normal((5, c.dim)).astype(np.float32)
    positions = np.arange(3, 8)
    w_gguf = model.tensors["blk.0.attn_q.weight"]
    q_ours = ours._rope((h @ w_gguf.T).reshape(5, c.n_heads, c.head_dim), positions)

    w_hf = gguf_to_hf_rows(w_gguf, c.n_heads)
    q = (h @ w_hf.T).reshape(5, c.n_heads, c.head_dim).astype(np.float64)
    inv = c.rope_theta ** (-np.arange(0, c.head_dim, 2) / c.head_dim)
    angles = np.concatenate([np.outer(positions, inv)] * 2, axis=-1)[:, None, :]
    rotated = np.concatenate([-q[..., c.head_dim // 2:], q[..., :c.head_dim // 2]], axis=-1)
    q_hf = q * np.cos(angles) + rotated * np.sin(angles)
    # back to GGUF order within each head: HF dim j < hd/2 is GGUF 2j, j >= hd/2 is 2(j - hd/2)+1
    q_hf_as_gguf = np.empty_like(q_hf)
    q_hf_as_gguf[..., 0::2], q_hf_as_gguf[..., 1::2] = \
        q_hf[..., :c.head_dim // 2], q_hf[..., c.head_dim // 2:]
    # float32 (ours) against float64 (this check): a few float32 ulps of values of size ~1
    np.testing.assert_allclose(q_ours, q_hf_as_gguf, atol=1e-5, rtol=1e-5)


def test_hf_checkpoint_gives_the_same_logits(tmp_path):
    tensors = random_tensors(TINY, seed=9)
    a = FloatLlama(load_model(write_gguf(tmp_path / "m.gguf", tensors=tensors,
                                         matrix_type="F32"), tokenizer=False))
    b = FloatLlama(load_model(write_hf(tmp_path / "hf", tensors=tensors), tokenizer=False))
    ids = [5, 17, 200, 3, 99]
    # Identical float32 weights and arithmetic; only eps differs (GGUF stores it as float32).
    np.testing.assert_allclose(a.forward(ids, a.new_cache(5)), b.forward(ids, b.new_cache(5)),
                               atol=1e-5, rtol=0)


def test_greedy_stops_at_end_of_sequence():
    class Scripted:
        def __init__(self):
            self.calls = 0

        def new_cache(self, capacity):
            return None

        def forward(self, tokens, cache):
            self.calls += 1
            logits = np.zeros((len(tokens), 4), np.float32)
            logits[-1, 3 if self.calls < 3 else 0] = 1
            return logits

    result = greedy(Scripted(), [1], 10, eos_id=0)
    assert result.tokens == [3, 3, 0]
    assert greedy(Scripted(), [1], 2).tokens == [3, 3]
    with pytest.raises(ValueError, match="at least one token"):
        greedy(Scripted(), [], 2)


def test_text_stream_holds_back_partial_characters(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode(" ✓ done")
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == " ✓ done"
    assert all("\ufffd" not in piece for piece in pieces)
