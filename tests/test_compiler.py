"""The compiler: a compiled model run by the ISA simulator (through the host sequence of
flightgen.sim.host) equals the quantized model reference bit for bit at every step: the
logits of every decode step, and the KV cache that every step (prefill steps included)
stores in HBM. Expected values come from flightgen.sim.quant_model.QuantLlama."""

import dataclasses
import json

import numpy as np
import pytest
from configs import STRIPED
from model_files import TINY, write_gguf

from flightgen.cli import main
from flightgen.compiler.binary import read_binary, write_binary
from flightgen.compiler.build import compile_model, instruction_bytes
from flightgen.compiler.frontends import load_model
from flightgen.compiler.model import ModelDescription
from flightgen.compiler.passes import PIPELINE, CompileConfig, CompileError
from flightgen.compiler.quantize import QuantConfig
from flightgen.compiler.target import TARGETS, Target, TargetError, load_target
from flightgen.isa.assembly import disassemble
from flightgen.isa.machine import SIM_CORE
from flightgen.sim.host import Host
from flightgen.sim.quant_model import QuantLlama

SMALL = TARGETS["sim-small"]
PROMPT = [5, 17, 200, 3, 99, 42, 7, 0, 255, 128, 64, 31, 9]  # 13 tokens: buckets 16 and 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_gguf(tmp_path_factory.mktemp("tiny") / "m.gguf"))


def _reference_of(binary, model):
    """The quantized reference on exactly the weights the binary holds (after the quantize
    and prune passes), the LM head untied so that its own format is kept."""
    graph = binary.graph
    config = dataclasses.replace(model.config, tied_embeddings=False)
    tensors = {name: t.data for name, t in graph.tensors.items() if t.role != "cache"}
    return QuantLlama(ModelDescription(config, tensors, None, model.source), QuantConfig())


def check_generation(binary, reference, prompt, steps):
    """Prefill ``prompt`` and decode ``steps`` tokens on the ISA simulator; assert the logits
    of every decode step and the whole KV cache equal the reference's."""
    host = Host(binary)
    cache = reference.new_cache(binary.layout["capacity"])
    got = host.prefill(prompt)
    want = reference.forward(prompt, cache)[-1]
    np.testing.assert_array_equal(got, want)
    for _ in range(steps):
        token = int(np.argmax(want))
        got = host.step(token, "decode")
        want = reference.forward([token], cache)[-1]
        np.testing.assert_array_equal(got, want)
    seen = cache.length
    assert host.position == seen
    for layer in range(reference.config.n_layers):
        k, kw, v, vw = host.cache(layer)
        np.testing.assert_array_equal(k, cache.k_codes[layer, :seen])
        np.testing.assert_array_equal(v, cache.v_codes[layer, :seen])
        for words, mult, exp in ((kw, cache.k_mult, cache.k_exp), (vw, cache.v_mult,
                                                                   cache.v_exp)):
            np.testing.assert_array_equal(words & 0xFFFF, mult[layer, :seen])
            np.testing.assert_array_equal(((words >> 16 & 0xFF) ^ 0x80) - 0x80,
                                          exp[layer, :seen])
    return host


@pytest.mark.parametrize("mode", ["dynamic", "bucket"])
@pytest.mark.parametrize("cores", [1, 2])
def test_tiny_model_equals_reference(tiny, mode, cores):
    binary = compile_model(SMALL.with_cores(cores), CompileConfig(mode=mode), model=tiny)
    host = check_generation(binary, QuantLlama(tiny), PROMPT, 8)
    assert host.position == len(PROMPT) + 8
    programs = {(p.core, p.phase, p.bucket) for p in binary.programs}
    if mode == "dynamic":
        assert programs == {(c, ph, 0) for c in range(cores) for ph in ("prefill", "decode")}
    else:  # capacity 128: prefill bucket 128, decode buckets 16 .. 128
        assert programs == {(c, "prefill", 128) for c in range(cores)} | {
            (c, "decode", b) for c in range(cores) for b in range(16, 129, 16)}


def test_pruned_mixed_precision_model_equals_reference(tiny):
    config = CompileConfig(weights="int4-g32-asym", precision=(("attn", "int8-g32-sym"),),
                           sparsity="8:16", sparse="ffn")
    binary = compile_model(SMALL, config, model=tiny)
    tensors = binary.graph.tensors
    assert tensors["blk.0.attn_q.weight"].data.bits == 8
    assert tensors["blk.1.ffn_up.weight"].data.bits == 4
    assert tensors["blk.1.ffn_up.weight"].data.mask is not None
    assert tensors["blk.0.attn_q.weight"].data.mask is None
    check_generation(binary, _reference_of(binary, tiny), PROMPT[:4], 4)


@pytest.mark.parametrize("config", [
    CompileConfig(),
    CompileConfig(weights="int4-g32-sym", precision=(("attn", "int8-g32-sym"),),
                  sparsity="8:16", sparse="ffn")])
def test_striped_weights_equal_reference(tiny, config):
    """A core whose load unit takes two lines a cycle: every weight tile's weights, and its
    scales and masks, load striped over aligned pairs of channels, so do the KV cache's keys
    and values (appended by striped stores), and generation still equals the reference."""
    target = Target("striped", STRIPED, channel_bytes=1 << 24)
    binary = compile_model(target, config, model=tiny)
    check_generation(binary, _reference_of(binary, tiny), PROMPT[:5], 3)
    tiles = [t for where in binary.places.values() if "tiles" in where
             for t in where["tiles"]]
    for where in (t for tile in tiles for t in (tile, tile["meta"])):
        assert where["stripe"] == 2 and where["port"] % 2 == 0
    assert {t["port"] for t in tiles} == {0, 2}
    # each head's keys and values striped too: appended by striped stores, read by striped
    # loads (the scale words stay on one channel: VEC is not banked)
    caches = {name: where for name, where in binary.places.items() if name.startswith("kv.")}
    assert all((where.get("stripe") == 2) == name.endswith((".k", ".v"))
               for name, where in caches.items())
    raw = np.frombuffer(binary.program(0, "decode").words, np.uint8).reshape(-1, 32)
    lines = disassemble([int.from_bytes(row.tobytes(), "little") for row in raw]).splitlines()
    heads = TINY.n_layers * TINY.n_heads
    for kind, count in (("load buffer=wgt", len(tiles) + 2 * heads),
                        ("load buffer=meta", len(tiles)), ("store", len(caches) // 2)):
        assert sum(line.startswith(kind) and "stripe=1" in line for line in lines) == count


def test_ir_is_dumped_after_every_pass(tiny, tmp_path):
    compile_model(SMALL, CompileConfig(), model=tiny, dump=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{i:02d}-{p.name}.json"
                                       for i, p in enumerate(PIPELINE, 1)]
    last = json.loads(files[-1].read_text())
    assert [n["op"] for n in last["nodes"]] == (
        ["embed"] + ["attention_block", "ffn_block"] * TINY.n_layers + ["head"])
    assert all("place" in t for t in last["tensors"] if t["role"] in ("matrix", "norm"))
    first = json.loads(files[0].read_text())
    assert len(first["nodes"]) > len(last["nodes"])  # before fusion


def test_placement_balances_the_channels(tiny):
    binary = compile_model(SMALL, CompileConfig(), model=tiny)
    traffic = binary.graph.attrs["channel_traffic"]
    assert max(traffic.values()) - min(traffic.values()) <= max(
        p["bytes"] for t in binary.graph.tensors.values() for p in [t.attrs.get("place", {})]
        if "bytes" in p) + 4096


def test_binary_round_trip_runs(tiny, tmp_path):
    binary = compile_model(SMALL, CompileConfig(), model=tiny)
    path = tmp_path / "tiny.fgb"
    write_binary(path, binary)
    loaded = read_binary(path, target=SMALL)
    host, again = Host(binary), Host(loaded)
    np.testing.assert_array_equal(host.prefill(PROMPT[:3]), again.prefill(PROMPT[:3]))


def test_config_only_llama2_7b_dynamic_storage():
    from flightgen.compile import _configs

    binary = compile_model(load_target("u280"), CompileConfig(weights="int4-g32-sym",
                                                              context=2048),
                           model_config=_configs()["llama2-7b"])
    assert binary.layout["capacity"] == 2048
    assert all(image.data is None and image.fill["kind"] == "random" for image in binary.images)
    assert instruction_bytes(binary) <= 50e6
    assert {(p.core, p.phase) for p in binary.programs} == {
        (c, ph) for c in range(3) for ph in ("prefill", "decode")}


@pytest.mark.parametrize("config, message", [
    (dict(context=100), "context must be a multiple of 32"),
    (dict(mode="fast"), "mode must be dynamic or bucket"),
    (dict(sparsity="3:7"), "sparsity must be one of"),
    (dict(weights="int3"), "configuration must be gguf or like int4-g64-sym"),
])
def test_bad_compile_configs(config, message):
    with pytest.raises(CompileError, match=message):
        CompileConfig(**config)


def test_target_files_of_before_the_vector_lanes_still_read():
    """A configuration written when only the SFU was narrowed (``sfu_lanes``) reads as the same
    vector datapath width; an unknown field is still refused."""
    data = TARGETS["u280"].to_dict()
    data["core"]["sfu_lanes"] = data["core"].pop("vector_lanes")
    assert Target.from_dict(data) == TARGETS["u280"]
    data["core"]["lanes_of_nothing"] = 4
    with pytest.raises(TargetError, match="^t.json: not a valid hardware configuration"):
        Target.from_dict(data, "t.json")


def test_targets_refuse_what_does_not_fit(tiny):
    from flightgen.compile import _configs

    with pytest.raises(CompileError, match="sim-small: RMSNorm over 4096 values but the SFU "
                                           "holds 256"):
        compile_model(SMALL, model_config=_configs()["llama2-7b"])
    with pytest.raises(CompileError, match="context 4096 does not fit sim-small: .*softmax "
                                           "over 4096 tokens"):
        compile_model(SMALL, CompileConfig(context=4096), model=tiny)
    with pytest.raises(CompileError, match="3 cores but the model has 2 layers"):
        compile_model(SMALL.with_cores(3), model=tiny)
    # the board configuration's engine has MUXes for dense and 8:16 only
    with pytest.raises(CompileError, match="^4:16 sparsity runs as 4:16, which the u280 "
                                           "matrix engine leaves out \\(it runs 16:16, 8:16\\)$"):
        compile_model(load_target("u280"), CompileConfig(sparsity="4:16"),
                      model_config=_configs()["llama2-7b"])


def test_cli_compile_inspect_disasm(tiny, tmp_path, capsys):
    out = tmp_path / "tiny.fgb"
    assert main(["compile", str(tiny.source), "--hw", "sim-small", "--mode", "bucket", "-o",
                 str(out)]) == 0
    captured = capsys.readouterr()
    assert "sim-small x1, bucket mode, 9 programs" in captured.out
    assert "pass quantize" in captured.err and "writing" in captured.err
    assert main(["inspect", str(out)]) == 0
    assert "decode" in capsys.readouterr().out
    assert main(["disasm", str(out), "--range", "0:3"]) == 0
    text = capsys.readouterr().out
    assert text.count("load buffer=vec") == 3 and "rmsnorm" not in text


def test_cli_config_only_and_errors(tmp_path, capsys):
    out = tmp_path / "llama.fgb"
    assert main(["compile", "--config-only", "llama2-7b", "--hw", "u280", "--weights",
                 "int4-g32-sym", "--context", "2048", "-o", str(out)]) == 0
    assert "u280 x3 tensor parallel, dynamic mode, 6 programs" in capsys.readouterr().out
    assert out.stat().st_size < 20e6  # random fills are not stored
    for argv, message in (
            (["--config-only", "opt-6.7b"], "unknown model 'opt-6.7b'"),
            (["--hw", "nonesuch"], "unknown hardware configuration 'nonesuch'"),
            (["--precision", "attn"], "expected PREFIX=FORMAT"),
    ):
        assert main(["compile", *argv, "-o", str(tmp_path / "x.fgb")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.fgb").exists()
    assert main(["compile", "--config-only", "llama2-7b", "-o",
                 str(tmp_path / "missing" / "x.fgb")]) == 2


def test_binary_for_another_target_is_refused(tiny, tmp_path):
    from flightgen.compiler.binary import BinaryError
    from flightgen.compiler.target import Target

    path = tmp_path / "tiny.fgb"
    write_binary(path, compile_model(SMALL, model=tiny))
    other = Target("other", dataclasses.replace(SIM_CORE, vec_lines=2048))
    with pytest.raises(BinaryError, match="vec_lines"):
        read_binary(path, target=other)


def test_smollm2_equals_reference(smollm2):
    """The Done-when of the compiler on the real model: prefill of a prompt, then 8 decode
    steps, dynamic mode, one core (the other modes and core counts are the slow test)."""
    binary = compile_model(TARGETS["sim"], CompileConfig(), model=smollm2)
    check_generation(binary, QuantLlama(smollm2), smollm2.tokenizer.encode("The capital of"),
                     8)


@pytest.mark.slow
@pytest.mark.parametrize("mode, cores", [("bucket", 1), ("dynamic", 3), ("bucket", 3)])
def test_smollm2_equals_reference_all_modes(smollm2, mode, cores):
    binary = compile_model(TARGETS["sim"].with_cores(cores), CompileConfig(mode=mode),
                           model=smollm2)
    check_generation(binary, QuantLlama(smollm2),
                     smollm2.tokenizer.encode("Once upon a time, in a"), 8)


def test_hf_checkpoint_equals_reference(tmp_path):
    """A Hugging Face LLaMA checkpoint (float safetensors, rotate-half q/k rows) compiles and
    runs like the reference of the same checkpoint."""
    from model_files import write_hf

    model = load_model(write_hf(tmp_path / "hf"))
    binary = compile_model(SMALL, CompileConfig(weights="int8-g32-sym"), model=model)
    check_generation(binary, QuantLlama(model, QuantConfig("int8")), PROMPT[:5], 3)


@pytest.mark.slow
def test_bench_compile_script(tmp_path):
    """The storage and compile-time figures of the compiler (the Done-when of its issue):
    LLaMA2-7B dynamic-mode instructions for every context up to 2048 within 50 MB, and a
    config-only compile within 60 s on this machine's kind."""
    from scripts_runner import run_script

    out, result = run_script("bench_compile.py", [], tmp_path / "bench.json", timeout=1800)
    rows = {(r["model"].split()[0], r["mode"]): r for r in result["results"]}
    dynamic, bucket = rows[("LLaMA2-7B", "dynamic")], rows[("LLaMA2-7B", "bucket")]
    assert dynamic["instruction_bytes"] <= 50e6 and dynamic["context"] == 2048
    assert bucket["instruction_bytes"] > 10 * dynamic["instruction_bytes"]
    assert bucket["programs"] == 3 * (16 + 128)
    assert "FlightLLM" in out


@pytest.mark.parametrize("mode", ["dynamic", "bucket"])
def test_tiny_model_tensor_parallel_equals_reference(tiny, mode):
    """Two cores as a tensor-parallel group (one KV head each): the logits of every step
    and the KV cache bit for bit the reference's, the cores running at once on the ISA
    simulator and meeting at 4 barriers per layer."""
    target = load_target("sim-small", cores=2, parallel="tensor")
    binary = compile_model(target, CompileConfig(mode=mode), model=tiny)
    host = check_generation(binary, QuantLlama(tiny), PROMPT, 8)
    assert host.position == len(PROMPT) + 8
    assert binary.layout["handoffs"] == []
    # each core computes its own KV head and half of every other matrix's rows
    caches = binary.layout["caches"][0]
    assert [kv["k"]["core"] for kv in caches] == [0, 1]
    for program in binary.programs:
        words = [int.from_bytes(program.words[i:i + 32], "little")
                 for i in range(0, len(program.words), 32)]
        assert disassemble(words).count("barrier ") == 4 * tiny.config.n_layers


@pytest.mark.slow
def test_tensor_parallel_smollm2_equals_reference(smollm2):
    """SmolLM2-135M on three cores, each with one KV head (3 query heads) and a third of
    every other matrix: prefill and 4 decode steps equal the quantized reference."""
    target = load_target("sim", cores=3, parallel="tensor")
    binary = compile_model(target, CompileConfig(), model=smollm2)
    check_generation(binary, QuantLlama(smollm2), smollm2.tokenizer.encode("The capital of"),
                     4)
