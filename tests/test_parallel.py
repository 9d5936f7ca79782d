"""Tensor parallelism outside the compiler's model tests: the targets (exchange port, channel
map), the cycle model of a group (barriers couple the cores), and the CLI's choice."""

import dataclasses
import json

import pytest
from model_files import write_gguf

from flightgen.cli import main
from flightgen.compiler.target import (
    TARGETS,
    Target,
    TargetError,
    board_target,
    load_target,
    tensor_parallel,
)
from flightgen.isa.assembly import assemble
from flightgen.isa.machine import SIM_CORE
from flightgen.sim.perf import Timing, estimate, estimate_group

BARRIER_CORE = dataclasses.replace(SIM_CORE, barrier=True)


def test_a_tensor_parallel_target_shares_one_channel():
    from flightgen.boards.alveo import U280

    target = tensor_parallel(board_target(U280))
    assert (target.cores, target.core.hbm_ports, target.local_ports) == (3, 11, 10)
    assert target.core.barrier and target.core.exchange_port == 10
    # the ports below the exchange port reach channels of their own, the exchange ports one
    assert [target.channel(1, p) for p in (0, 9)] == [10, 19]
    assert {target.channel(c, 10) for c in range(3)} == {30}
    assert target.channels == 31 <= U280.hbm.channels
    assert Target.from_dict(target.to_dict()) == target
    assert TARGETS["u280"] == target  # the board presets are tensor-parallel groups
    layers = board_target(U280, "layers")
    assert "parallel" not in layers.to_dict()  # layer-pipeline binaries as before
    assert (layers.core.hbm_ports, layers.channels) == (10, 30)


@pytest.mark.parametrize("make, message", [
    (lambda: Target("t", SIM_CORE, cores=2, parallel="tensor"), "barrier and an exchange port"),
    (lambda: Target("t", BARRIER_CORE, cores=9, parallel="tensor"), "cores must be 1 to 8"),
    (lambda: Target("t", BARRIER_CORE, parallel="pipeline"),
     "parallel must be one of layers, tensor"),
    (lambda: load_target("sim", 3, "rows"), "parallel must be one of"),
])
def test_bad_parallel_targets_are_refused(make, message):
    with pytest.raises(TargetError, match=message):
        make()


def test_a_tensor_parallel_file_is_not_a_layer_pipeline(tmp_path):
    path = tmp_path / "tp.json"
    path.write_text(json.dumps(load_target("sim", 2, "tensor").to_dict()))
    assert load_target(str(path)).tensor
    with pytest.raises(TargetError, match="is a tensor-parallel configuration"):
        load_target(str(path), None, "layers")


def test_the_group_model_waits_for_the_last_core_at_a_barrier():
    """Two cores: one reaches the barrier at once, the other after a long SFU command; both
    barriers end Timing.barrier cycles after the later arrival, and nothing after a barrier
    is dispatched before it ends."""
    fast = assemble("barrier peers=2 slot=0 addr=0 value=1\n"
                    "vector op=add length=4 a=0 b=0 out=0\nhalt")
    slow = assemble("vector op=add length=256 a=0 b=0 out=0 release=sys\n"
                    "barrier peers=2 slot=1 addr=0 value=1 wait=vector\n"
                    "vector op=add length=4 a=0 b=0 out=0\nhalt")
    timing = Timing()
    ends = [{pc: end for _, pc, end in e.trace}
            for e in estimate_group(BARRIER_CORE, [fast, slow], timing=timing)]
    arrival = ends[1][0] + timing.token  # the slow core takes the vector unit's token
    assert ends[0][0] == ends[1][1] == arrival + timing.barrier
    assert ends[0][1] > ends[0][0] and ends[1][2] > ends[1][1]
    # alone (its peers there already), a barrier costs Timing.barrier from its arrival
    alone = {pc: end for _, pc, end in estimate(BARRIER_CORE, fast, timing=timing).trace}
    assert alone[0] < ends[0][0]
    # the same program on both cores: they arrive together, the group takes a lone core's time
    assert [e.cycles for e in estimate_group(BARRIER_CORE, [slow, slow])] == \
        [estimate(BARRIER_CORE, slow).cycles] * 2


def test_compile_cli_tensor_parallel(tmp_path, capsys):
    from flightgen.compiler.binary import read_binary

    model = write_gguf(tmp_path / "m.gguf")  # two KV heads
    out = tmp_path / "m.fgb"
    assert main(["compile", str(model), "--hw", "sim-small", "--cores", "2",
                 "--parallel", "tensor", "-o", str(out)]) == 0
    binary = read_binary(out)
    assert binary.target["parallel"] == "tensor" and binary.layout["handoffs"] == []
    assert main(["compile", str(model), "--hw", "sim-small", "--cores", "3",
                 "--parallel", "tensor", "-o", str(tmp_path / "x.fgb")]) == 2
    assert "3 tensor-parallel cores but the model has 2 KV heads" in capsys.readouterr().err
    assert not (tmp_path / "x.fgb").exists()
    assert TARGETS["sim"].parallel == "layers"


def test_the_group_model_shares_the_exchange_channel():
    """The cores of a group trade through one pseudo-channel: a load or store there takes a
    beat of each core in turn, so two cores loading (or storing) 256 lines of it at once
    each take 256 cycles longer than one core alone; a load from a core's own port does not."""
    port = BARRIER_CORE.exchange_port
    bytes_ = 256 * BARRIER_CORE.line_bytes
    for text in (f"load buffer=vec line=0 port={port} addr=0 length=256\nhalt",
                 f"store buffer=vec line=0 port={port} addr=0 length={bytes_}\nhalt"):
        words = assemble(text)
        alone = estimate(BARRIER_CORE, words).cycles
        assert [e.cycles for e in estimate_group(BARRIER_CORE, [words, words])] == \
            [alone + 256] * 2, text
    own = assemble("load buffer=vec line=0 port=0 addr=0 length=256\nhalt")
    assert [e.cycles for e in estimate_group(BARRIER_CORE, [own, own])] == \
        [estimate(BARRIER_CORE, own).cycles] * 2
