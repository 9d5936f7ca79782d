"""The matrix engine's contract: its command, the layout of every stream it reads and writes,
and what it computes.

The matrix engine (:class:`flightgen.hw.mpe.MatrixEngine`) computes :func:`~flightgen.isa.
weights.linear`, bit for bit: INT8 activation blocks (one scale per 32 inputs) times
group-quantized weights (INT8, INT4 or INT2 codes, signed or with group minimums, dense or N:M
sparse), in FX. Its shape is set by two parameters, collected in :class:`Geometry`:

* ``chain`` (L): packed DSPs per VPU. Each DSP multiplies one shared operand by two packed
  ones, so a VPU does ``2 L`` MACs per cycle.
* ``vpus`` (V): VPUs. The engine has ``2 V`` output **lanes**.

Modes
-----
* **MV** (decode): one activation vector; VPU ``v`` takes weight rows ``2 v`` and ``2 v + 1``
  of each **row group** of ``2 V`` rows (the packed operand is the two rows' codes, the shared
  operand is the activation). Output lane ``2 v + j`` is row ``2 V g + 2 v + j``.
* **MM** (prefill): a tile of up to ``2 V`` tokens; every VPU takes the same weight row (the
  shared operand) and its own two tokens (packed). A row group is one row; output lane ``t``
  is token ``t``.

Kept slots and steps
--------------------
Each row is processed as its stream of **kept slots**: all columns in order (dense), or the
kept columns in order (sparse). The hardware mode keeps ``n`` of every 16 columns
(:func:`~flightgen.isa.sparse.hardware_keep`: 16, 8, 4 or 2; 2:4 runs as 8:16). A **step**
covers ``L`` consecutive slots of every row in flight; a row takes ``S = K n / (16 L)`` steps.
K is padded with zero columns (and zero activation blocks, which contribute nothing) to a
multiple of ``max(32, 16 L / n)``.

Streams (every beat is a little-endian bit field, element 0 in the lowest bits)
------------------------------------------------------------------------------
``cmd``      :data:`command_layout`.
``act``      (when ``load``) ``ceil(K / 8L)`` beats per token (MV: 1 token; MM: ``2 V``),
             each ``8 L`` INT8 codes then ``L / 4`` block scales (mult: 16 bits, exp: 8 bits
             signed). Missing tokens and the tail are zero.
``weights``  :attr:`Geometry.weight_bits`-bit beats holding the codes of consecutive steps
             back to back (the last beat zero-padded). A step is ``2 V L`` codes in MV (index
             ``(v L + i) 2 + j``: VPU ``v``, slot ``i``, row ``j`` of the pair) or ``L`` codes
             in MM, each ``bits`` wide (two's complement when signed).
``masks``    (sparse only) :attr:`Geometry.mask_bits`-bit beats, consecutive steps back to back:
             per step and row pair (MV: ``V`` pairs; MM: the row's pair), the ``L / n``
             16-bit window masks the step covers (:func:`~flightgen.isa.sparse.window_masks`).
``scales``   per row group, one beat per ``2**(wgroup + pair)`` consecutive 32-blocks (the
             command's **scale format**, :func:`scale_format`): per lane (MV: its row; MM: lane
             0 only, the row) one 32-bit word. With ``pair = 0`` the word is the float16 scale
             (low 16 bits) and minimum (high 16 bits) of the ``2**wgroup`` blocks it covers;
             with ``pair = 1`` (symmetric weights) it is the scales of two consecutive groups
             of ``2**wgroup`` blocks (the first in the low 16 bits) and the minimum is 0. Block
             ``b`` of a row thus takes word ``b >> (wgroup + pair)``, half
             ``(b >> wgroup) & pair``. Not read by a ``raw`` command.
``out``      one beat per row group: ``2 V`` FX values (int32); with ``raw``, the exact integer
             dot products of the codes instead (``sum_k code * activation``, saturated to
             int32; scales and minimums are not applied). Raw products serve attention, whose
             scales are per token and head rather than per weight group.
"""

from dataclasses import dataclass

import numpy as np
from amaranth.lib import data, enum

from .numerics import ACT_GROUP, mul_round_shift, saturate
from .sparse import WINDOW, check_nm, window_masks
from .weights import LINEAR_ACC_FRAC, LINEAR_TERM_BITS, GroupQuantized, linear

__all__ = ["MatrixMode", "KEEP_CODES", "BITS_CODES", "WGROUP_CODES", "scale_format",
           "scale_blocks", "check_keeps", "check_code_bits", "check_modes", "command_layout",
           "Geometry",
           "WeightStreams", "padded_shape", "bits_to_bytes", "MatrixOperation", "CHAIN_RANGE",
           "MAX_VPUS"]


class MatrixMode(enum.Enum, shape=1):
    """Which operand the engine packs: MV packs two weight rows, MM two tokens."""
    MV = 0
    MM = 1


#: Hardware keep (of 16) -> its command code.
KEEP_CODES = {16: 0, 8: 1, 4: 2, 2: 3}
#: Code width -> its command code.
BITS_CODES = {8: 0, 4: 1, 2: 2}
#: Weight group (elements along K) -> its ``wgroup`` code: blocks per scale word, ``2**code``.
WGROUP_CODES = {32: 0, 64: 1, 128: 2, 256: 3}
#: Allowed chain lengths (packed DSPs per VPU).
CHAIN_RANGE = (8, 16, 32, 64)


def _check_distinct(name, values, allowed, required):
    """``values`` as a tuple from largest to smallest, checked: distinct members of
    ``allowed`` (a dict's keys) that hold ``required``."""
    try:
        out = tuple(sorted({int(v) for v in values}, reverse=True))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of {sorted(allowed)}, not "
                         f"{values!r}") from None
    if required not in out or not set(out) <= set(allowed) or len(out) != len(values):
        raise ValueError(f"{name} must hold {required} and distinct values of "
                         f"{', '.join(map(str, allowed))}, not {list(values)!r}")
    return out


def check_keeps(keeps):
    """The hardware keeps an engine supports, checked: a tuple from largest to smallest of
    values of :data:`KEEP_CODES` that holds 16 (dense). An engine leaves out the sparse MUX
    inputs of the modes it does not support, and refuses their commands."""
    return _check_distinct("keeps", keeps, KEEP_CODES, 16)


def check_code_bits(code_bits):
    """The weight code widths an engine unpacks, checked: a tuple from widest to narrowest of
    values of :data:`BITS_CODES` that holds 8 (attention's keys and values are INT8). An
    engine leaves out the unpacker slices of the others, and refuses their commands."""
    return _check_distinct("code_bits", code_bits, BITS_CODES, 8)


def check_modes(modes):
    """The matrix modes an engine supports, checked: a tuple of :class:`MatrixMode` that holds
    MV. Without MM an engine keeps one token lane of activations instead of ``2 V``."""
    try:
        values = tuple(sorted({MatrixMode[m.upper()] if isinstance(m, str) else MatrixMode(m)
                               for m in modes}, key=lambda m: m.value))
    except (TypeError, ValueError, KeyError, AttributeError):
        raise ValueError(f"modes must be a sequence of 'mv', 'mm', not {modes!r}") from None
    if MatrixMode.MV not in values or len(values) != len(modes):
        raise ValueError(f"modes must hold MV and no repeats, not {list(modes)!r}")
    return values
#: Largest VPU count.
MAX_VPUS = 64

#: The command beat. ``blocks`` counts 32-blocks of (padded) K; ``groups`` counts row groups;
#: ``load`` makes the engine take a new activation tile first (else it reuses the last one);
#: ``raw`` returns integer dot products instead of scaled FX results; ``wgroup`` and ``pair``
#: are the scale format (:func:`scale_format`).
command_layout = data.StructLayout({
    "mode": MatrixMode,
    "keep": 2,
    "bits": 2,
    "signed": 1,
    "load": 1,
    "raw": 1,
    "blocks": 16,
    "groups": 16,
    "wgroup": 2,
    "pair": 1,
})


def scale_format(group, symmetric):
    """The leanest ``scales`` stream for weight groups of ``group`` elements: ``(wgroup,
    pair)``. A group of 32, 64, 128 or 256 takes one word per group (:data:`WGROUP_CODES`);
    any other multiple of 32 one word per 32-block (the group's scale repeated). Symmetric
    groups pack two scales per word (``pair = 1``), halving the stream again."""
    return WGROUP_CODES.get(group, 0), int(bool(symmetric))


def scale_blocks(command):
    """32-blocks per ``scales`` beat of a command: ``2**(wgroup + pair)``."""
    return 1 << (command.get("wgroup", 0) + command.get("pair", 0))


def bits_to_bytes(values, bits, beat_bits):
    """Pack unsigned ``values`` (each ``bits`` wide, ``bits`` dividing 8 or a multiple of 8)
    back to back into ``beat_bits``-bit beats, the last one zero-padded: uint8
    ``(beats, beat_bits // 8)``, each beat little-endian."""
    values = np.asarray(values).ravel()
    if bits % 8 == 0:
        flat = (values.astype(np.int64) & ((1 << bits) - 1)).astype(f"<u{bits // 8}")
        flat = flat.view(np.uint8)
    else:
        per = 8 // bits
        padded = np.zeros(-(-values.size // per) * per, np.uint8)
        padded[:values.size] = values.astype(np.int64) & ((1 << bits) - 1)
        shifts = (np.arange(per) * bits).astype(np.uint8)
        flat = np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)
    size = beat_bits // 8
    beats = -(-flat.size // size)
    out = np.zeros(beats * size, np.uint8)
    out[:flat.size] = flat
    return out.reshape(beats, size)


@dataclass(frozen=True)
class Geometry:
    """Chain length and VPU count, with the stream widths they imply."""

    chain: int
    vpus: int

    def __post_init__(self):
        if self.chain not in CHAIN_RANGE:
            raise ValueError(f"chain length must be one of {', '.join(map(str, CHAIN_RANGE))}, "
                             f"not {self.chain!r}")
        if not (isinstance(self.vpus, int) and 1 <= self.vpus <= MAX_VPUS
                and self.vpus & (self.vpus - 1) == 0):
            raise ValueError(f"VPU count must be a power of two from 1 to {MAX_VPUS}, "
                             f"not {self.vpus!r}")

    @property
    def lanes(self):
        """Output lanes: ``2 V``."""
        return 2 * self.vpus

    @property
    def macs(self):
        """Multiply-accumulates per cycle: ``2 V L``."""
        return 2 * self.vpus * self.chain

    @property
    def row_codes(self):
        """Activation codes per activation-memory row (and ``act`` beat): ``8 L``."""
        return 8 * self.chain

    @property
    def weight_bits(self):
        """``weights`` beat width: one MV step of INT8 codes, ``16 V L``."""
        return 16 * self.vpus * self.chain

    @property
    def mask_bits(self):
        """``masks`` beat width: one MV step of 2:16 masks, ``8 V L``."""
        return 8 * self.vpus * self.chain

    @property
    def act_bits(self):
        """``act`` beat width: ``8 L`` codes and ``L / 4`` block scales."""
        return 64 * self.chain + 24 * (self.chain // 4)

    def k_multiple(self, keep):
        """K is padded to a multiple of this for hardware keep ``keep``."""
        return max(ACT_GROUP, WINDOW * self.chain // keep)

    def codes_per_step(self, mode):
        return 2 * self.vpus * self.chain if mode == MatrixMode.MV else self.chain

    def mask_windows_per_step(self, mode, keep):
        """16-bit masks per step: ``L / n`` per row pair in flight."""
        pairs = self.vpus if mode == MatrixMode.MV else 1
        return pairs * self.chain // keep

    def steps(self, blocks, keep):
        """Steps per row group."""
        return blocks * ACT_GROUP * keep // (WINDOW * self.chain)


def _pad_columns(weight, k_padded, keep):
    """Pad a weight matrix with zero columns (and a valid mask) to ``k_padded`` columns."""
    n, k = weight.shape
    extra = k_padded - k
    groups = extra // weight.group
    if extra == 0:
        return weight
    if extra % weight.group:
        raise ValueError(f"cannot pad K={k} to {k_padded} in whole groups of {weight.group}")
    codes = np.concatenate([weight.codes, np.zeros((n, extra), weight.codes.dtype)], axis=1)
    zeros = np.zeros((n, groups), np.float16)
    scales = np.concatenate([weight.scales, zeros], axis=1)
    mins = None if weight.mins is None else np.concatenate([weight.mins, zeros], axis=1)
    mask = None
    if weight.mask is not None:
        tail = np.zeros((n, extra // WINDOW, WINDOW), bool)
        tail[..., :keep] = True
        mask = np.concatenate([weight.mask, tail.reshape(n, extra)], axis=1)
    return GroupQuantized(codes, weight.bits, weight.signed, weight.group, scales, mins, mask)


def _pad_rows(weight, rows):
    """Pad with zero rows (zero scales; a valid mask) to ``rows`` rows."""
    n, k = weight.shape
    extra = rows - n
    if extra == 0:
        return weight
    groups = k // weight.group
    codes = np.concatenate([weight.codes, np.zeros((extra, k), weight.codes.dtype)])
    scales = np.concatenate([weight.scales, np.zeros((extra, groups), np.float16)])
    mins = None if weight.mins is None else np.concatenate(
        [weight.mins, np.zeros((extra, groups), np.float16)])
    mask = None
    if weight.mask is not None:
        mask = np.concatenate([weight.mask, np.repeat(weight.mask[-1:], extra, axis=0)])
        codes[n:] = 0
    return GroupQuantized(codes, weight.bits, weight.signed, weight.group, scales, mins, mask)


def padded_shape(geometry, mode, n, k, group, keep):
    """``(rows, K)`` a weight of ``n`` rows and ``k`` columns is padded to for a command:
    K to a multiple of the engine's step and of the weight group, rows to whole row groups."""
    multiple = int(np.lcm(geometry.k_multiple(keep), group))
    rows = n if MatrixMode(mode) == MatrixMode.MM else -(-n // geometry.lanes) * geometry.lanes
    return rows, -(-k // multiple) * multiple


def mask_keep(weight):
    """The hardware keep (16 when dense) of a weight's mask, checked."""
    if weight.mask is None:
        return 16
    k = weight.shape[1]
    keep = int(weight.mask[0, :WINDOW].sum()) if k >= WINDOW else 0
    if keep not in KEEP_CODES or keep == 16:
        raise ValueError(f"mask keeps {keep} of 16 columns; the engine runs N:16 with "
                         f"N in 2, 4, 8")
    check_nm(weight.mask, keep, WINDOW)
    return keep


class WeightStreams:
    """The weight-side streams of a command on one weight matrix: what a compiler places in
    memory for the matrix engine (the activations are the program's).

    Parameters
    ----------
    geometry : Geometry
    mode : MatrixMode
    weight : GroupQuantized
        As for :class:`MatrixOperation`.
    raw : bool
        No ``scales`` stream.

    Members
    -------
    keep, blocks, groups : int
        Hardware keep, 32-blocks of padded K, row groups.
    wgroup, pair : int
        The scale format of the ``scales`` stream (:func:`scale_format`).
    weight : GroupQuantized
        The padded weight.
    data : dict
        ``weights``, ``masks``, ``scales``: uint8 arrays ``(beats, beat bytes)`` (``masks``
        empty when dense, ``scales`` when raw).
    """

    def __init__(self, geometry, mode, weight, *, raw=False):
        mode = MatrixMode(mode)
        if weight.bits not in BITS_CODES:
            raise ValueError(f"the matrix engine takes {', '.join(map(str, BITS_CODES))}-bit "
                             f"codes, not {weight.bits}-bit")
        if weight.group % ACT_GROUP:
            raise ValueError(f"weight groups must be multiples of {ACT_GROUP}, not "
                             f"{weight.group}")
        g = geometry
        keep = mask_keep(weight)
        n, k = weight.shape
        rows, k_padded = padded_shape(g, mode, n, k, weight.group, keep)
        weight = _pad_rows(_pad_columns(weight, k_padded, keep), rows)
        blocks = k_padded // ACT_GROUP
        if blocks >= 1 << 16:
            raise ValueError(f"K={k} is too long for one command")
        self.geometry, self.mode, self.weight = g, mode, weight
        self.keep, self.blocks = keep, blocks
        self.wgroup, self.pair = scale_format(weight.group, weight.symmetric)
        self.groups = rows // g.lanes if mode == MatrixMode.MV else rows
        empty = np.zeros((0, 1), np.uint8)
        self.data = {"weights": self._weights(), "masks": self._masks(),
                     "scales": empty if raw else self._scales()}

    def _kept(self, array):
        """Per row, the kept slots of ``array`` (same shape as the weight)."""
        if self.weight.mask is None:
            return array
        return array[self.weight.mask].reshape(array.shape[0], -1)

    def _weights(self):
        g, b = self.geometry, self.weight.bits
        slots = self._kept(self.weight.codes.astype(np.int64))  # (rows, S L)
        steps = g.steps(self.blocks, self.keep)
        if self.mode == MatrixMode.MV:
            order = slots.reshape(self.groups, g.vpus, 2, steps, g.chain).transpose(0, 3, 1, 4, 2)
        else:
            order = slots.reshape(self.groups, steps, g.chain)
        return bits_to_bytes(order.ravel() & ((1 << b) - 1), b, g.weight_bits)

    def _masks(self):
        g = self.geometry
        if self.weight.mask is None:
            return np.zeros((0, g.mask_bits // 8), np.uint8)
        windows = window_masks(self.weight.mask).astype(np.int64)  # (pairs, K / 16)
        steps = g.steps(self.blocks, self.keep)
        per_step = g.chain // self.keep
        if self.mode == MatrixMode.MV:
            order = windows.reshape(self.groups, g.vpus, steps, per_step).transpose(0, 2, 1, 3)
        else:
            order = np.repeat(windows, 2, axis=0).reshape(self.groups, steps, per_step)
        return bits_to_bytes(order.ravel(), WINDOW, g.mask_bits)

    def _scales(self):
        g, weight = self.geometry, self.weight
        span = 1 << self.wgroup  # 32-blocks per group entry
        repeat = weight.group // (ACT_GROUP * span)
        scales = np.repeat(weight.scales.view(np.uint16).astype(np.int64), repeat, axis=1)
        if self.pair:  # two groups' scales per word, the first low
            if scales.shape[1] % 2:
                scales = np.concatenate([scales, np.zeros_like(scales[:, :1])], axis=1)
            words = scales[:, 0::2] | (scales[:, 1::2] << 16)
        else:
            mins = np.zeros_like(scales) if weight.mins is None else np.repeat(
                weight.mins.view(np.uint16).astype(np.int64), repeat, axis=1)
            words = scales | (mins << 16)  # (rows, beats per row group)
        per_group = words.shape[1]
        if self.mode == MatrixMode.MV:
            order = words.reshape(self.groups, g.lanes, per_group).transpose(0, 2, 1)
        else:
            order = np.zeros((self.groups, per_group, g.lanes), np.int64)
            order[:, :, 0] = words
        return bits_to_bytes(order.ravel(), 32, 32 * g.lanes)


class MatrixOperation:
    """One matrix-engine command with every beat of its streams and its expected output.

    Parameters
    ----------
    geometry : Geometry
    mode : MatrixMode
    weight : GroupQuantized
        ``(N, K)``; INT8, INT4 or INT2 codes; a mask must be an N:16 pattern shared by row
        pairs (2:4 included); the group must be a multiple of 32.
    codes : ndarray of int8, ``(T, K)``
        Activation codes (T = 1 in MV, at most ``2 V`` in MM).
    scale : (mult, exp)
        Activation block scales, ``(T, K // 32)`` each, as from
        :func:`flightgen.isa.numerics.quantize_per_group`.
    load : bool
        Whether the command loads the activations (``False`` reuses the engine's tile).
    raw : bool
        Return the integer dot products of the codes (no scales, no minimums).

    Members
    -------
    command : dict
        The ``cmd`` beat's fields.
    beats : dict
        Stream name -> list of raw payloads (ints).
    expected : ndarray of int64, ``(groups, 2 V)``
        The ``out`` beats: :func:`~flightgen.isa.weights.linear` arranged by lane.
    reference : ndarray of int64, ``(T, N)``
        :func:`~flightgen.isa.weights.linear` of the unpadded operands.
    """

    def __init__(self, geometry, mode, weight, codes, scale, *, load=True, raw=False):
        mode = MatrixMode(mode)
        codes = np.asarray(codes)
        mult, exp = (np.asarray(v, dtype=np.int64) for v in scale)
        n, k = weight.shape
        streams = WeightStreams(geometry, mode, weight, raw=raw)  # checks the weight
        tokens = codes.shape[0]
        limit = 1 if mode == MatrixMode.MV else geometry.lanes
        if codes.shape != (tokens, k) or not 1 <= tokens <= limit:
            raise ValueError(f"{mode.name} takes 1 to {limit} activation vectors of {k} codes, "
                             f"not shape {codes.shape}")
        self.reference = linear(codes, (mult, exp), weight)

        g = geometry
        keep, blocks, groups, weight = streams.keep, streams.blocks, streams.groups, streams.weight
        k_padded = blocks * ACT_GROUP
        act = np.zeros((limit if mode == MatrixMode.MM else 1, k_padded), np.int64)
        act[:tokens, :k] = codes
        amult = np.zeros((act.shape[0], blocks), np.int64)
        aexp = np.zeros_like(amult)
        amult[:tokens, :k // ACT_GROUP] = mult
        aexp[:tokens, :k // ACT_GROUP] = exp
        self.geometry, self.mode, self.keep, self.blocks, self.groups = (
            g, mode, keep, blocks, groups)
        self.command = {"mode": mode, "keep": KEEP_CODES[keep], "bits": BITS_CODES[weight.bits],
                        "signed": int(weight.signed), "load": int(load), "raw": int(raw),
                        "blocks": blocks, "groups": groups, "wgroup": streams.wgroup,
                        "pair": streams.pair}
        self.beats = {"act": self._act_beats(act, amult, aexp) if load else []}
        for name, rows in streams.data.items():
            self.beats[name] = [int.from_bytes(row.tobytes(), "little") for row in rows]
        if raw:
            self.reference = saturate(codes.astype(np.int64)
                                      @ weight.codes[:n, :k].astype(np.int64).T, 32)
            full = saturate(act @ weight.codes.astype(np.int64).T, 32)
        else:
            full = linear(act, (amult, aexp), weight)  # zero padding contributes nothing
        self.expected = (full.reshape(groups, g.lanes) if mode == MatrixMode.MV
                         else full.T.copy())

    @property
    def out_beats(self):
        """``out`` beats of the command: one per row group."""
        return self.groups

    @property
    def steps(self):
        """Steps in the whole command."""
        return self.groups * self.geometry.steps(self.blocks, self.keep)

    def _act_beats(self, act, amult, aexp):
        g = self.geometry
        rows = -(-act.shape[1] // g.row_codes)
        width = rows * g.row_codes
        codes = np.zeros((act.shape[0], width), np.int64)
        codes[:, :act.shape[1]] = act
        mult = np.zeros((act.shape[0], width // ACT_GROUP), np.int64)
        exp = np.zeros_like(mult)
        mult[:, :amult.shape[1]], exp[:, :aexp.shape[1]] = amult, aexp
        beats = []
        per_row = g.row_codes // ACT_GROUP
        for token in range(act.shape[0]):
            for row in range(rows):
                value = 0
                for i, c in enumerate(codes[token, row * g.row_codes:(row + 1) * g.row_codes]):
                    value |= (int(c) & 0xFF) << (8 * i)
                base = 8 * g.row_codes
                for j in range(per_row):
                    block = row * per_row + j
                    field = int(mult[token, block]) | ((int(exp[token, block]) & 0xFF) << 16)
                    value |= field << (base + 24 * j)
                beats.append(value)
        return beats


# The engine on raw beats (what the ISA simulator executes) -----------------------------------

def _unpack_fields(data, bits, count, signed):
    """The first ``count`` ``bits``-wide fields of little-endian bytes ``data``."""
    planes = np.unpackbits(np.frombuffer(bytes(data), np.uint8), bitorder="little")
    planes = planes[:count * bits].reshape(count, bits).astype(np.int64)
    values = planes @ (np.int64(1) << np.arange(bits, dtype=np.int64))
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def decode_half(bits):
    """Float16 bit patterns as exact ``(mantissa, exponent)``: value = mantissa * 2**exponent,
    exponent ``max(field, 1) - 25``. The all-ones exponent is an ordinary binade (no infinity
    or NaN), as the engine's scaler decodes it."""
    bits = np.asarray(bits, dtype=np.int64)
    field = (bits >> 10) & 0x1F
    magnitude = (bits & 0x3FF) | ((field != 0).astype(np.int64) << 10)
    return np.where(bits >> 15 & 1, -magnitude, magnitude), np.maximum(field, 1) - 25


class MatrixStreams:
    """Beat counts and widths of one command's streams (``groups`` and ``blocks`` nonzero).

    Members
    -------
    act, weights, masks, scales, out : int
        Beats of each stream (``act`` is 0 when the command reuses the tile; ``masks`` 0 when
        dense; ``scales`` 0 when raw).
    """

    def __init__(self, geometry, command):
        g = geometry
        mode = MatrixMode(command["mode"])
        keep = {v: k for k, v in KEEP_CODES.items()}[command["keep"]]
        bits = {v: k for k, v in BITS_CODES.items()}[command["bits"]]
        blocks, groups = command["blocks"], command["groups"]
        tokens = 1 if mode == MatrixMode.MV else g.lanes
        self.mode, self.keep, self.bits, self.tokens = mode, keep, bits, tokens
        self.steps = g.steps(blocks, keep)
        self.act_per_token = -(-blocks * ACT_GROUP // g.row_codes)
        self.act = tokens * self.act_per_token if command["load"] else 0
        self.weights = -(-groups * self.steps * g.codes_per_step(mode) * bits // g.weight_bits)
        self.masks = 0 if keep == 16 else -(
            -groups * self.steps * g.mask_windows_per_step(mode, keep) * WINDOW // g.mask_bits)
        self.scales = 0 if command["raw"] else groups * -(-blocks // scale_blocks(command))
        self.out = groups


def execute(geometry, command, act, weights, masks, scales):
    """What the engine writes for one command, from the raw bytes of its streams.

    ``command`` holds :data:`command_layout`'s fields as integers (``blocks`` and ``groups``
    nonzero, a known ``bits`` code). ``act`` is the tile's bytes, each beat
    ``ceil(act_bits / 8)`` bytes (the new tile, or the last one loaded); ``weights``,
    ``masks`` and ``scales`` the beats of those streams back to back, each beat its width in
    bytes. Returns ``(out, bad_mask)``: the ``out`` beats as int64 ``(groups, 2 V)`` and whether
    a window mask did not keep exactly N of 16 columns (the engine flags it and treats the
    window as keeping the columns its mask names, as here).
    """
    g = geometry
    s = MatrixStreams(geometry, command)
    blocks, groups, raw = command["blocks"], command["groups"], command["raw"]
    k = blocks * ACT_GROUP
    lanes = g.lanes
    # activation tile: per token, beats of 8L codes then L/4 (mult 16, exp 8) block scales
    act_bytes = -(-g.act_bits // 8)
    per_token = s.act_per_token
    tile = np.frombuffer(bytes(act), np.uint8).reshape(s.tokens, per_token, act_bytes)
    codes = tile[:, :, :g.row_codes].astype(np.int8).astype(np.int64).reshape(s.tokens, -1)[:, :k]
    fields = [_unpack_fields(tile[t, r, g.row_codes:].tobytes(), 24, g.chain // 4, False)
              for t in range(s.tokens) for r in range(per_token)]
    fields = np.array(fields, np.int64).reshape(s.tokens, -1)[:, :blocks]
    a_mult, a_exp = fields & 0xFFFF, ((fields >> 16) & 0xFF) - ((fields >> 23 & 1) << 8)
    # weights: kept slots per row, in stream order
    cps = g.codes_per_step(s.mode)
    slots = _unpack_fields(weights, s.bits, groups * s.steps * cps, bool(command["signed"]))
    rows = groups * (lanes if s.mode == MatrixMode.MV else 1)
    if s.mode == MatrixMode.MV:
        slots = slots.reshape(groups, s.steps, g.vpus, g.chain, 2).transpose(0, 2, 4, 1, 3)
    slots = slots.reshape(rows, s.steps * g.chain)
    dense = np.zeros((rows, k), np.int64)
    kept = np.ones((rows, k), bool)
    bad = False
    if s.keep == 16:
        dense[:] = slots
    else:
        per_step = g.chain // s.keep
        windows = _unpack_fields(masks, WINDOW,
                                 groups * s.steps * g.mask_windows_per_step(s.mode, s.keep),
                                 False)
        if s.mode == MatrixMode.MV:
            windows = windows.reshape(groups, s.steps, g.vpus, per_step).transpose(0, 2, 1, 3)
            windows = np.repeat(windows.reshape(groups * g.vpus, -1), 2, axis=0)
        windows = windows.reshape(rows, k // WINDOW)
        bitmap = ((windows[..., None] >> np.arange(WINDOW)) & 1).astype(bool)
        bad = bool((bitmap.sum(-1) != s.keep).any())
        kept = bitmap.reshape(rows, k)
        # the kept columns of each window take the window's slots in order; a window keeping
        # fewer columns leaves slots unused, one keeping more reads slots past its share as 0
        rank = np.cumsum(bitmap, axis=-1) - 1
        index = np.arange(k // WINDOW)[None, :, None] * s.keep + rank
        valid = bitmap & (rank < s.keep)
        taken = np.take_along_axis(slots, np.where(valid, index, 0).reshape(rows, k), axis=1)
        dense = np.where(valid.reshape(rows, k), taken, 0)
        kept = valid.reshape(rows, k)
    # per (token, row, block): integer dot product P and the kept activation sum X
    wb = dense.reshape(rows, blocks, ACT_GROUP).astype(np.float64)
    ab = codes.reshape(s.tokens, blocks, ACT_GROUP).astype(np.float64)
    p = np.einsum("tbi,rbi->trb", ab, wb).astype(np.int64)  # exact: |P| < 2**21
    if raw:
        total = p.sum(-1)
        out = saturate(total, 32)
    else:
        per_row = s.scales // groups
        words = _unpack_fields(scales, 32, s.scales * lanes, False)
        words = words.reshape(groups, per_row, lanes)
        if s.mode == MatrixMode.MV:
            words = words.transpose(0, 2, 1).reshape(rows, per_row)
        else:
            words = words[:, :, 0]
        # block b: word b >> (wgroup + pair), half (b >> wgroup) & pair
        wgroup, pair = command.get("wgroup", 0), command.get("pair", 0)
        block = np.arange(blocks)
        words = words[:, block >> (wgroup + pair)]
        if pair:
            half = (block >> wgroup) & 1
            scale_bits, min_bits = (words >> (16 * half)) & 0xFFFF, np.zeros_like(words)
        else:
            scale_bits, min_bits = words & 0xFFFF, words >> 16
        sm, se = decode_half(scale_bits)
        mm, me = decode_half(min_bits)
        x = np.einsum("tbi,rbi->trb", ab, kept.reshape(rows, blocks, ACT_GROUP)
                      .astype(np.float64)).astype(np.int64)
        base = np.minimum(se, np.where(mm == 0, se, me))
        value = (mul_shift(p * sm[None], se - base) + mul_shift(x * mm[None], me - base))
        shift = -(base[None] + a_exp[:, None, :] + LINEAR_ACC_FRAC - 16)
        terms = saturate(mul_round_shift(value, np.broadcast_to(a_mult[:, None, :], value.shape),
                                         shift), LINEAR_TERM_BITS)
        total = np.sum(terms, axis=-1, dtype=object if blocks > 1 << 10 else np.int64)
        out = saturate(mul_round_shift(total, 1, LINEAR_ACC_FRAC - 16), 32)
    out = np.asarray(out, dtype=np.int64)  # (tokens, rows)
    if s.mode == MatrixMode.MV:
        return out.reshape(groups, lanes), bad
    full = np.zeros((groups, lanes), np.int64)
    full[:, :s.tokens] = out.T
    return full, bad


def mul_shift(value, shift):
    """``value * 2**shift`` exactly for ``shift >= 0`` (Python integers when int64 would
    overflow)."""
    value, shift = np.broadcast_arrays(np.asarray(value), np.asarray(shift))
    if value.size and (int(np.abs(value).max()).bit_length() + int(shift.max()) > 62):
        out = np.empty(value.shape, object)
        for index in np.ndindex(value.shape):
            out[index] = int(value[index]) << int(shift[index])
        return out
    return value.astype(np.int64) << shift
