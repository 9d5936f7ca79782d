"""Instruction formats: the one definition the compiler encodes with, the disassembler decodes
with and the hardware decoder uses as its signal shape.

Every instruction is one 256-bit word (:data:`WORD_BITS`), a :class:`amaranth.lib.data.Struct`
per opcode that starts with the common :class:`Header`. Bits are numbered from the least
significant; a word is stored little-endian (32 bytes), so instruction ``i`` of a program sits
at byte ``32 i``.

Units and tokens
----------------
Instructions execute on five units (:class:`Unit`): ``LOAD`` (HBM to on-chip buffers),
``STORE`` (on-chip buffers to HBM), ``MATRIX`` (the matrix engine), ``VECTOR`` (the SFU and the
block quantizer) and ``SYS`` (the dispatcher itself). The dispatcher reads the program in
order and appends each instruction to its unit's queue; each unit runs its queue in order.
Units synchronise only through **tokens**: bit ``u`` of ``wait`` makes the instruction take a
token sent to its unit by unit ``u`` before it starts, and bit ``u`` of ``release`` sends one
token to unit ``u`` once the instruction has finished (its results are visible to every later
reader). A unit never waits for or releases to itself.

Every bit a format does not use (``spare`` in the header, ``reserved`` at the end) must be 0.

Length registers
----------------
The host sets seven 32-bit **length registers** ``r1`` .. ``r7`` before a run (``r0`` reads 0).
The fields marked *adaptive* below come in pairs ``(f, f_mul)``: the value used is
``f + f_mul * r[reg]``, with ``reg`` from the header, so one program serves every context
length. A resolved value must fit the field ``f``; else the instruction is illegal.
"""

from amaranth.lib import data, enum

__all__ = ["WORD_BITS", "WORD_BYTES", "REGISTERS", "Opcode", "Unit", "OPCODE_UNIT", "Buffer",
           "SysOp", "Header", "TransferInstruction", "MatrixInstruction",
           "VectorInstruction", "QuantInstruction", "TokenInstruction", "RescaleInstruction",
           "SysInstruction", "FORMATS", "ADAPTIVE",
           "fields", "encode", "decode_fields"]

#: Bits (and bytes) of one instruction word.
WORD_BITS = 256
WORD_BYTES = WORD_BITS // 8
#: Length registers (``r0`` reads as 0; the host sets ``r1`` .. ``r7``).
REGISTERS = 8


class Opcode(enum.Enum, shape=4):
    """The operation. Every other value (0 included, so zeroed memory) is illegal."""
    LOAD = 1
    STORE = 2
    MATRIX = 3
    VECTOR = 4
    QUANT = 5
    TOKEN = 6
    RESCALE = 7
    SYS = 15


class Unit(enum.Enum, shape=3):
    """Execution units, also the bit positions of ``wait`` and ``release``."""
    LOAD = 0
    STORE = 1
    MATRIX = 2
    VECTOR = 3
    SYS = 4


#: The unit that executes each opcode.
OPCODE_UNIT = {Opcode.LOAD: Unit.LOAD, Opcode.STORE: Unit.STORE, Opcode.MATRIX: Unit.MATRIX,
               Opcode.VECTOR: Unit.VECTOR, Opcode.QUANT: Unit.VECTOR, Opcode.TOKEN: Unit.VECTOR,
               Opcode.RESCALE: Unit.VECTOR, Opcode.SYS: Unit.SYS}


class Buffer(enum.Enum, shape=2):
    """On-chip buffers (see :mod:`flightgen.isa.machine` for what each holds)."""
    VEC = 0
    ACT = 1
    WGT = 2
    META = 3


class SysOp(enum.Enum, shape=4):
    """``SYNC`` only waits for and releases tokens; ``HALT`` ends the program; ``BARRIER``
    meets the other cores of a tensor-parallel group (see :class:`SysInstruction`)."""
    SYNC = 0
    HALT = 1
    BARRIER = 2


class Header(data.Struct):
    """Common to every instruction (bits 0-23)."""
    opcode: Opcode
    wait: 5
    release: 5
    reg: 3
    spare: 7


class TransferInstruction(data.Struct):
    """``LOAD`` and ``STORE``: moves between HBM and an on-chip buffer.

    Both walk ``count3`` planes of ``count2`` rows at byte ``addr + i3 stride3 + i2 stride2``
    of port ``port``, rows in order, and the consecutive lines of ``buffer`` from ``line``:

    * ``LOAD`` reads rows of ``length`` **lines** into consecutive lines; ``addr``,
      ``stride2`` and ``stride3`` are multiples of the line size.
    * ``STORE`` writes rows of ``length`` **bytes** taken from consecutive bytes of the buffer
      (from the start of ``line``), at any alignment.

    A ``LOAD`` into ``WGT`` or ``META`` may be **striped** over ``s = 2**stripe`` ports (up to
    the core's ``load_lanes``): line ``i`` of a row then comes from port ``port + i % s`` at
    byte ``addr + i3 stride3 + i2 stride2 + (i // s)`` lines, so the load unit takes ``s``
    lines a cycle, one from each port. ``port``, ``line`` and ``length`` are multiples of
    ``s``.

    A ``STORE`` may be striped the same way (``s`` up to ``load_lanes``, ``port`` a multiple
    of ``s``): its byte addresses are then **logical** addresses of the region a striped
    ``LOAD`` reads, whose per-port address ``a`` is logical address ``s a``. Logical byte
    ``b`` lives on port ``port + (b // L) % s`` at byte ``(b // L // s) L + b % L`` (``L``
    the line size): consecutive lines go round the ports
    (:func:`flightgen.isa.machine.striped_bytes`).

    Adaptive: ``addr``, ``length``.
    """
    header: Header
    buffer: Buffer
    line: 16
    port: 5
    addr: 40
    addr_mul: 16
    length: 16
    length_mul: 8
    count2: 12
    stride2: 32
    count3: 12
    stride3: 32
    stripe: 2
    reserved: 39


class MatrixInstruction(data.Struct):
    """``MATRIX``: one matrix-engine command (:data:`flightgen.isa.matrix.command_layout`)
    whose streams live in on-chip buffers: activation beats in ``ACT`` from ``act``, weight
    beats in ``WGT`` from ``wgt``, mask beats in ``META`` from ``mask`` and scale beats in
    ``META`` from ``scale``; the output beats go to ``VEC`` from ``out``. ``keep``, ``bits`` and
    ``wgroup`` hold the engine's codes; ``wgroup`` and ``pair`` are the scale format (0 and 0:
    one scale and minimum per 32-block). Adaptive: ``blocks``, ``groups``."""
    header: Header
    mode: 1
    keep: 2
    bits: 2
    signed: 1
    load: 1
    raw: 1
    blocks: 16
    blocks_mul: 8
    groups: 16
    groups_mul: 8
    act: 16
    wgt: 16
    mask: 16
    scale: 16
    out: 16
    wgroup: 2
    pair: 1
    reserved: 93


class VectorInstruction(data.Struct):
    """``VECTOR``: one SFU command (:data:`flightgen.isa.vector.command_layout`) on ``VEC``:
    operand ``a`` from line ``a``, operand ``b`` (when the operation reads one) from line
    ``b``, the result to line ``out``. Adaptive: ``length``, ``valid``, ``position``."""
    header: Header
    op: 3
    length: 16
    length_mul: 8
    valid: 16
    valid_mul: 8
    frac: 8
    eps: 40
    position: 32
    position_mul: 8
    a: 16
    b: 16
    out: 16
    reserved: 45


class QuantInstruction(data.Struct):
    """``QUANT``: quantize one FX vector of ``length`` elements in ``VEC`` (from line ``src``)
    to activation beats of the matrix engine in ``ACT`` (from line ``dst``), with one scale per
    32 elements (:func:`flightgen.isa.numerics.quantize_per_group`). Adaptive: ``length``."""
    header: Header
    length: 16
    length_mul: 8
    src: 16
    dst: 16
    reserved: 176


class TokenInstruction(data.Struct):
    """``TOKEN``: quantize one vector of ``length`` elements of ``VEC`` (from line ``src``)
    with one scale for the whole vector, for attention.

    * ``fold = 0``: :func:`flightgen.isa.numerics.quantize_per_token` (INT8 codes) of the FX
      values; the codes go to ``ACT`` from line ``dst`` as activation beats (block scales 0).
    * ``fold = 1``: the values are probabilities; each is multiplied by the scale word at the
      same position of the vector at ``sc`` (:func:`flightgen.isa.attention.fold`), quantized
      to 15-bit codes (:func:`~flightgen.isa.attention.weight_codes`) and split in two INT8
      halves (:func:`~flightgen.isa.attention.split`): the high halves to ``dst``, the low
      halves to ``lo``.

    The vector's scale goes to ``VEC`` line ``scale`` as a one-element vector holding a
    **scale word** (``mult`` in bits 0-15, ``exp`` in bits 16-23, two's complement).
    Adaptive: ``length``."""
    header: Header
    fold: 1
    length: 16
    length_mul: 8
    src: 16
    sc: 16
    dst: 16
    lo: 16
    scale: 16
    reserved: 127


class RescaleInstruction(data.Struct):
    """``RESCALE``: attention's integer results to FX, ``length`` elements of ``VEC``.

    * ``output = 0`` (scores): ``flightgen.isa.attention.scores(x, a, y, c)``: raw dot products
      at ``x``, the per-element key scale words at ``y``, the query scale word at ``a`` (one
      element), the constant scale ``(c_mult, c_exp)``.
    * ``output = 1``: ``flightgen.isa.attention.output(combine(x, y), a)``: the dot
      products of the high and low code halves at ``x`` and ``y``, the weights' scale word at
      ``a``.

    The result goes to ``out``. Adaptive: ``length``."""
    header: Header
    output: 1
    length: 16
    length_mul: 8
    x: 16
    y: 16
    a: 16
    c_mult: 16
    c_exp: 8
    out: 16
    reserved: 119


class SysInstruction(data.Struct):
    """``SYS``: executed by the dispatcher, in program order: it waits for its tokens, releases
    its tokens, then ``SYNC`` goes on and ``HALT`` ends the program (the run finishes once every
    queue has drained). Their other fields are 0.

    ``BARRIER`` (a core with ``CoreConfig.barrier``): the cores of a tensor-parallel group meet.
    After its tokens, the dispatcher writes ``value`` as a 32-bit little-endian word at byte
    ``addr + 4 slot`` of the core's **exchange port** (its last HBM port; the cores of a group
    share that channel), then reads the flag line at ``addr`` until each of its first
    ``peers`` words is at least ``value`` (unsigned), then releases its tokens and goes on.
    ``value`` numbers the barriers of a run and grows from one barrier to the next (the
    compiler writes ``k + 256 r5``, the barrier's number in the step and the token's position),
    so a flag left by an earlier step never satisfies a later barrier. The flag write is
    complete (every peer reads it) before the barrier passes. ``addr`` is a multiple of the
    line size; ``slot < peers <= min(8, line_bytes / 4)``. Adaptive: ``value``.
    """
    header: Header
    op: SysOp
    peers: 4
    slot: 3
    addr: 40
    value: 32
    value_mul: 16
    reserved: 133


#: Opcode -> format.
FORMATS = {Opcode.LOAD: TransferInstruction, Opcode.STORE: TransferInstruction,
           Opcode.MATRIX: MatrixInstruction, Opcode.VECTOR: VectorInstruction,
           Opcode.QUANT: QuantInstruction, Opcode.TOKEN: TokenInstruction,
           Opcode.RESCALE: RescaleInstruction, Opcode.SYS: SysInstruction}

#: Opcode -> adaptive fields (each ``f`` has a multiplier ``f_mul``).
ADAPTIVE = {Opcode.LOAD: ("addr", "length"), Opcode.STORE: ("addr", "length"),
            Opcode.MATRIX: ("blocks", "groups"),
            Opcode.VECTOR: ("length", "valid", "position"), Opcode.QUANT: ("length",),
            Opcode.TOKEN: ("length",), Opcode.RESCALE: ("length",), Opcode.SYS: ("value",)}

for _format in FORMATS.values():
    assert data.Layout.cast(_format).size == WORD_BITS, _format


def _flatten(layout, prefix="", offset=0):
    for name, field in data.Layout.cast(layout):
        shape = field.shape
        if isinstance(shape, type) and issubclass(shape, data.Struct):
            yield from _flatten(shape, f"{prefix}{name}.", offset + field.offset)
        else:
            yield f"{prefix}{name}", offset + field.offset, field.width


_FIELDS = {op: tuple(_flatten(fmt)) for op, fmt in FORMATS.items()}


def fields(opcode):
    """``(name, offset, width)`` of every field of ``opcode``'s format, header fields named
    ``header.opcode`` etc., in bit order."""
    return _FIELDS[Opcode(opcode)]


def encode(opcode, values):
    """Encode a word from ``values`` (field name -> int; header fields as ``wait``,
    ``release``, ``reg``; missing fields are 0). Raises ValueError on an unknown field or a
    value that does not fit."""
    opcode = Opcode(opcode)
    values = dict(values)
    word = opcode.value
    known = set()
    for name, offset, width in _FIELDS[opcode]:
        short = name.removeprefix("header.")
        known.add(short)
        if short == "opcode":
            continue
        value = int(values.get(short, 0))
        if not 0 <= value < 1 << width:
            raise ValueError(f"{opcode.name.lower()} field {short} must be 0 to "
                             f"{(1 << width) - 1}, not {value}")
        word |= value << offset
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{opcode.name.lower()} has no field {sorted(unknown)[0]!r}")
    return word


def decode_fields(word):
    """Split a word into ``(opcode, {field: int})``, or ``(None, {})`` when the opcode is
    illegal. Header fields appear without the ``header.`` prefix; every value is a plain
    unsigned integer (enum fields are not checked here)."""
    code = word & 0xF
    try:
        opcode = Opcode(code)
    except ValueError:
        return None, {}
    return opcode, {name.removeprefix("header."): (word >> offset) & ((1 << width) - 1)
                    for name, offset, width in _FIELDS[opcode]}


def format_tables():
    """Markdown tables of every format (field, bits, width), in opcode order: the part of
    ``docs/isa.md`` that a test keeps equal to these definitions."""
    out = []
    for opcode in FORMATS:
        out.append(f"### {opcode.name} (opcode {opcode.value}, unit "
                   f"{OPCODE_UNIT[opcode].name})\n")
        out.append("| field | bits | width |")
        out.append("| --- | --- | --- |")
        for name, offset, width in fields(opcode):
            bits = f"{offset}" if width == 1 else f"{offset + width - 1}:{offset}"
            adaptive = " (adaptive)" if name in ADAPTIVE[opcode] else ""
            out.append(f"| `{name}`{adaptive} | {bits} | {width} |")
        out.append("")
    return "\n".join(out)
