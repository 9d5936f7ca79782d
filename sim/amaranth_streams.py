"""Stream helpers for :mod:`amaranth.sim` testbenches (the fast unit-test tier).

:func:`put_beats` and :func:`get_beats` move beats through an ``amaranth.lib.stream`` interface
from an async testbench, inserting idle and backpressure cycles from stall generators (see
:func:`flightgen.sim.benches.streams.stall_pattern`; any callable returning a bool works).
"""

__all__ = ["put_beats", "get_beats", "run_commands", "refuse_command"]


async def put_beats(ctx, stream, payloads, idle=lambda: False):
    """Transfer each payload into ``stream`` (a design input), idling while ``idle()`` is true.

    Returns the cycle counts at which each transfer happened, counted from the call.
    """
    cycles, cycle = [], 0
    for payload in payloads:
        while idle():
            await ctx.tick()
            cycle += 1
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            cycle += 1
            if ready:
                break
        cycles.append(cycle - 1)
        ctx.set(stream.valid, 0)
    return cycles


async def get_beats(ctx, stream, count, backpressure=lambda: False):
    """Take ``count`` beats from ``stream`` (a design output), stalling while
    ``backpressure()`` is true.

    Returns ``(payloads, cycles)``: the payload values and the cycle of each transfer.
    """
    payloads, cycles, cycle = [], [], 0
    while len(payloads) < count:
        stall = backpressure()
        ctx.set(stream.ready, 0 if stall else 1)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        cycle += 1
        if valid and not stall:
            payloads.append(payload)
            cycles.append(cycle - 1)
    ctx.set(stream.ready, 0)
    return payloads, cycles


def run_commands(component, operations, inputs, command_layout, stall=None, seed=0,
                 extra=None):
    """Simulate a command-driven component (matrix engine, SFU) in :mod:`amaranth.sim`.

    Every operation's ``command`` goes to ``cmd`` and its ``beats[name]`` (raw payload bits) to
    each stream in ``inputs``; ``out`` is drained of ``sum(op.out_beats)`` beats. With
    ``stall`` (a probability), every source idles and the sink stalls at random. ``extra`` is
    one more background testbench (e.g. a monitor).

    Returns ``(payloads, cycles)``: the ``out`` payloads and the cycles of every ``cmd`` and
    ``out`` transfer.
    """
    import numpy as np
    from amaranth.sim import Simulator

    rng = np.random.default_rng(seed)
    idle = (lambda: bool(rng.random() < stall)) if stall else (lambda: False)
    got, cycles = [], {}
    total = sum(op.out_beats for op in operations)

    def feeder(name):
        async def bench(ctx):
            port = getattr(component, name)
            shape = port.payload.shape()
            convert = shape.from_bits if hasattr(shape, "from_bits") else (lambda bits: bits)
            beats = [convert(beat) for op in operations for beat in op.beats[name]]
            await put_beats(ctx, port, beats, idle)
        return bench

    async def commands(ctx):
        payloads = [command_layout.const(op.command) for op in operations]
        cycles["cmd"] = await put_beats(ctx, component.cmd, payloads, idle)

    async def sink(ctx):
        payloads, cycles["out"] = await get_beats(ctx, component.out, total, idle)
        got.extend(payloads)

    sim = Simulator(component)
    sim.add_clock(1e-8)
    for name in inputs:
        sim.add_testbench(feeder(name), background=True)
    sim.add_testbench(commands, background=True)
    if extra is not None:
        sim.add_testbench(extra, background=True)
    sim.add_testbench(sink)
    sim.run()
    return got, cycles


def refuse_command(component, command, command_layout, inputs, cycles=50):
    """Send one command a component must refuse, offer a valid beat on every stream in
    ``inputs`` and keep ``out`` ready for ``cycles`` cycles; fail if any input is read or any
    output appears. Returns ``(error, cmd_ready)`` at the end."""
    from amaranth.sim import Simulator

    seen = {}

    async def bench(ctx):
        await put_beats(ctx, component.cmd, [command_layout.const(command)])
        for name in inputs:
            ctx.set(getattr(component, name).valid, 1)
        ctx.set(component.out.ready, 1)
        for _ in range(cycles):
            await ctx.tick()
            for name in inputs:
                assert not ctx.get(getattr(component, name).ready), (
                    f"a refused command read its {name} stream")
            assert not ctx.get(component.out.valid), "a refused command gave an output"
        seen["result"] = (ctx.get(component.error), ctx.get(component.cmd.ready))

    sim = Simulator(component)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen["result"]
