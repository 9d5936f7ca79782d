"""Stream helpers for :mod:`amaranth.sim` testbenches (the fast unit-test tier).

:func:`put_beats` and :func:`get_beats` move beats through an ``amaranth.lib.stream`` interface
from an async testbench, inserting idle and backpressure cycles from stall generators (see
:func:`flightgen.sim.benches.streams.stall_pattern`; any callable returning a bool works).
"""

__all__ = ["put_beats", "get_beats"]


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
