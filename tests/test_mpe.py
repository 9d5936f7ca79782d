"""MatrixEngine in amaranth.sim (the fast tier): commands in every mode, precision and sparsity
against flightgen.isa.matrix (hence flightgen.isa.weights.linear), with stalls, and exact cycle
counts."""

import numpy as np
import pytest

from flightgen.hw.mpe import ERROR_CODES, MatrixEngine
from flightgen.hw.unpack import StepUnpacker
from flightgen.isa.matrix import MatrixMode, command_layout
from flightgen.sim.amaranth_streams import refuse_command, run_commands
from flightgen.sim.stimulus import matrix_operation

INPUTS = ("act", "weights", "masks", "scales")


def simulate(engine, operations, stall=None, seed=0, extra=None):
    """Run ``operations`` back to back; return the out beats and the cycle of every cmd and
    out transfer."""
    got, cycles = run_commands(engine, operations, INPUTS, command_layout, stall, seed, extra)
    return np.array([[int(v) for v in beat] for beat in got], dtype=np.int64), cycles


def check(values, operations):
    start = 0
    for op in operations:
        np.testing.assert_array_equal(values[start:start + op.groups], op.expected)
        start += op.groups


@pytest.mark.parametrize("mode", list(MatrixMode))
@pytest.mark.parametrize("pattern", [(16, 16), (8, 16), (4, 16), (2, 16), (2, 4)])
def test_modes_and_sparsity(mode, pattern):
    engine = MatrixEngine(8, 2, 512)
    rng = np.random.default_rng(hash((mode.value,) + pattern) % 2**32)
    ops = [matrix_operation(rng, engine.geometry, mode, weights, pattern)
           for weights in ("int8", "int4-asym", "int2")]
    values, _ = simulate(engine, ops, stall=0.3)
    check(values, ops)


@pytest.mark.parametrize("mode", list(MatrixMode))
def test_scale_formats(mode):
    """Weight groups of 64, 128 and 256 take one scales beat per group (symmetric groups one
    per two groups), a group of 96 one per block; under stalls every result is exact."""
    engine = MatrixEngine(8, 2, 1024)
    rng = np.random.default_rng(17 + mode.value)
    formats = [("int4", 128, (2, 1)), ("int8-asym", 64, (1, 0)), ("int4-asym", 256, (3, 0)),
               ("int2", 96, (0, 1)), ("int8", 256, (3, 1))]
    ops = [matrix_operation(rng, engine.geometry, mode, weights, (8, 16) if group == 64 else
                            (16, 16), group=group, k=group * int(rng.integers(1, 4)))
           for weights, group, _ in formats]
    assert [(op.command["wgroup"], op.command["pair"]) for op in ops] == [f[2] for f in formats]
    values, _ = simulate(engine, ops, stall=0.3)
    check(values, ops)


@pytest.mark.parametrize("chain", [8, 16])
@pytest.mark.parametrize("mode", list(MatrixMode))
def test_cycles_equal_expected(chain, mode):
    """Every sparsity, with and without a load: cycles exactly as expected_cycles() says, and
    a command without load reuses the tile the previous one loaded."""
    engine = MatrixEngine(chain, 1, 1024)
    rng = np.random.default_rng(chain)
    for pattern in [(16, 16), (8, 16), (4, 16), (2, 16)]:
        first = matrix_operation(rng, engine.geometry, mode, "int4", pattern, k=256, rows=4)
        again = matrix_operation(rng, engine.geometry, mode, "int8-asym", pattern, rows=2,
                                 load=False, activations=first.activations)
        for ops in ([first], [first, again]):
            values, cycles = simulate(engine, ops)
            check(values, ops)
            measured = cycles["out"][-1] - cycles["cmd"][-1] + 1
            assert measured == engine.expected_cycles(ops[-1]), (pattern, len(ops), measured)


@pytest.mark.parametrize(("field", "value", "code"), [
    ("blocks", 17, ERROR_CODES["too_long"]), ("bits", 3, ERROR_CODES["bad_bits"]),
    ("blocks", 0, ERROR_CODES["empty"]), ("groups", 0, ERROR_CODES["empty"])])
def test_refused_command_sets_error_and_reads_nothing(field, value, code):
    engine = MatrixEngine(8, 1, 512)  # 16 blocks at most
    op = matrix_operation(np.random.default_rng(3), engine.geometry, MatrixMode.MV, k=128)
    bad = {**op.command, field: value}
    assert refuse_command(engine, bad, command_layout, INPUTS) == (code, 1)


def test_a_reduced_engine_runs_what_it_supports_and_refuses_the_rest():
    """An MV-only engine with dense and 8:16 MUXes (the board configuration's) computes its
    commands exactly under stalls, and refuses an MM or a 4:16 command without reading it."""
    engine = MatrixEngine(8, 2, 512, keeps=(16, 8), modes=("mv",))
    rng = np.random.default_rng(23)
    ops = [matrix_operation(rng, engine.geometry, MatrixMode.MV, weights, pattern)
           for weights, pattern in (("int4", (16, 16)), ("int8-asym", (8, 16)),
                                    ("int2", (2, 4)), ("int4-asym", (16, 16)))]
    values, _ = simulate(engine, ops, stall=0.3)
    check(values, ops)
    for mode, pattern in ((MatrixMode.MM, (16, 16)), (MatrixMode.MV, (4, 16)),
                          (MatrixMode.MV, (2, 16))):
        op = matrix_operation(rng, engine.geometry, mode, "int8", pattern, k=128)
        assert refuse_command(engine, op.command, command_layout, INPUTS) == (
            ERROR_CODES["unsupported"], 1)


def test_an_engine_without_int2_runs_int8_and_int4_and_refuses_int2():
    """The board configuration's unpacker leaves out the INT2 slice the compiler never
    emits: INT8 and INT4 commands compute exactly under stalls, an INT2 one is refused."""
    engine = MatrixEngine(8, 2, 512, keeps=(16, 8), modes=("mv",), code_bits=(4, 8))
    assert engine.code_bits == (8, 4)
    rng = np.random.default_rng(29)
    ops = [matrix_operation(rng, engine.geometry, MatrixMode.MV, weights, pattern)
           for weights, pattern in (("int4", (16, 16)), ("int8-asym", (8, 16)),
                                    ("int4-asym", (2, 4)))]
    values, _ = simulate(engine, ops, stall=0.3)
    check(values, ops)
    op = matrix_operation(rng, engine.geometry, MatrixMode.MV, "int2", (16, 16), k=128)
    assert refuse_command(engine, op.command, command_layout, INPUTS) == (
        ERROR_CODES["unsupported"], 1)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="^keeps must hold 16 and distinct values of 16, 8, 4, "
                                         r"2, not \[8, 4\]$"):
        MatrixEngine(8, 1, keeps=(8, 4))
    with pytest.raises(ValueError, match=r"^modes must hold MV and no repeats, not \['mm'\]$"):
        MatrixEngine(8, 1, modes=("mm",))
    with pytest.raises(ValueError, match=r"^code_bits must hold 8 and distinct values of 8, 4, "
                                         r"2, not \[4, 2\]$"):
        MatrixEngine(8, 1, code_bits=(4, 2))
    with pytest.raises(ValueError, match="^max_k must be a positive multiple of 64, not 100$"):
        MatrixEngine(8, 1, 100)
    with pytest.raises(ValueError, match="^VPU count must be a power of two from 1 to 64, "
                                         "not 0$"):
        MatrixEngine(8, 0)
    with pytest.raises(ValueError, match="^slice width 48 does not divide the beat width 128$"):
        StepUnpacker(128, [32, 48])


def test_a_bad_mask_sets_an_error_and_does_not_hang():
    engine = MatrixEngine(8, 1, 512)
    op = matrix_operation(np.random.default_rng(5), engine.geometry, MatrixMode.MV, "int4",
                          (8, 16), k=128, rows=4)
    op.beats["masks"][0] ^= 1  # window 0 of the first step now keeps 7 or 9 columns
    errors = []

    async def watch(ctx):
        async for _, _, error in ctx.tick().sample(engine.error):
            errors.append(error)

    values, _ = simulate(engine, [op], extra=watch)
    assert values.shape == op.expected.shape  # every output beat still came
    assert errors[-1] == ERROR_CODES["bad_mask"]


@pytest.mark.parametrize("mode", list(MatrixMode))
def test_raw_dot_products(mode):
    """``raw`` commands return the exact integer dot products and read no scales."""
    engine = MatrixEngine(8, 2, 512)
    rng = np.random.default_rng(40 + mode.value)
    ops = [matrix_operation(rng, engine.geometry, mode, weights, pattern, raw=True)
           for weights, pattern in (("int8", (16, 16)), ("int4-asym", (8, 16)),
                                    ("int2", (2, 16)))]
    assert all(op.beats["scales"] == [] for op in ops)
    values, _ = simulate(engine, ops, stall=0.3)
    check(values, ops)
