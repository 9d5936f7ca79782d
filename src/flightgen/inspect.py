"""``flightgen inspect`` and ``flightgen disasm``: look inside a model binary (``.fgb``).

Both read the whole file and verify every checksum, so ``flightgen inspect`` is also the way to
check a file.
"""

import json
import os
import sys
import textwrap

from .errors import FlightgenError

__all__ = ["summary", "inspect_main", "parse_range", "disasm_lines", "disasm_main"]

_WIDTH = 100
_LABEL = 12


def _value(value):
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _flatten(mapping, prefix=""):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _line(label, text):
    """``label`` then ``text``, wrapped to 100 columns under the text."""
    indent = " " * (2 + _LABEL)
    return textwrap.fill(text, _WIDTH, initial_indent=f"  {label:<{_LABEL}}",
                         subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def _pairs(mapping, first=()):
    items = dict(_flatten(mapping))
    order = [key for key in first if key in items] + [key for key in items if key not in first]
    return " ".join(f"{key}={_value(items[key])}" for key in order) or "(none)"


def summary(binary, path, file_size):
    """The lines ``flightgen inspect`` prints for ``binary``, read from ``path``."""
    from .compiler.binary import FORMAT_VERSION

    target = binary.target
    lines = [f"{path}",
             _line("format", f"flightgen binary, version {FORMAT_VERSION}, {file_size:,} "
                             "bytes, checksums verified"),
             _line("target", f"{target.get('name', '(unnamed)')}, "
                             f"{target.get('cores', '?')} cores")]
    if isinstance(target.get("core"), dict):
        lines.append(_line("core", _pairs(target["core"])))
    rest = {key: value for key, value in target.items() if key not in ("name", "cores", "core")}
    if rest:
        lines.append(_line("hardware", _pairs(rest)))
    lines.append(_line("model", _pairs(binary.model, ("dim", "n_layers", "n_heads", "n_kv_heads",
                                                      "ffn_dim", "vocab_size"))))
    lines.append(_line("compile", _pairs(binary.config, ("mode",))))
    if binary.tokenizer is None:
        lines.append(_line("tokenizer", "none"))
    else:
        lines.append(_line("tokenizer", f"present ({len(binary.tokenizer.encode()):,} bytes)"))

    lines += ["", "programs", f"  {'core':>4}  {'phase':<7}  {'bucket':>7}  "
                              f"{'instructions':>12}  {'bytes':>12}"]
    for program in binary.programs:
        bucket = str(program.bucket) if program.bucket else "dynamic"
        lines.append(f"  {program.core:>4}  {program.phase:<7}  {bucket:>7}  "
                     f"{len(program.words) // 32:>12,}  {len(program.words):>12,}")
    code = sum(len(program.words) for program in binary.programs)
    lines.append(f"  {'total':<22}  {code // 32:>12,}  {code:>12,}")

    lines += ["", "images", f"  {'channel':>7}  {'bytes':>14}  contents"]
    for image in binary.images:
        contents = "data" if image.fill is None else \
            f"{image.fill['kind']} fill, seed {image.fill['seed']}"
        lines.append(f"  {image.channel:>7}  {image.size:>14,}  {contents}")
    lines.append(f"  {'total':<7}  {sum(image.size for image in binary.images):>14,}")

    lines += ["", "metadata"]
    lines += [_line(key, _value(value)) for key, value in binary.metadata.items()] or \
        ["  (none)"]
    return lines


def inspect_main(args, out=None):
    """Run the ``inspect`` verb; returns the exit status."""
    from .compiler.binary import read_binary, read_header

    out = out or sys.stdout
    binary = read_binary(args.binary)
    if args.json:
        print(json.dumps(read_header(args.binary), indent=2, ensure_ascii=False), file=out)
        return 0
    for line in summary(binary, args.binary, os.path.getsize(args.binary)):
        print(line, file=out)
    return 0


def parse_range(text, count):
    """The ``(start, stop)`` of ``--range`` text ``A:B`` (``A:``, ``:B`` or ``A`` also) in a
    program of ``count`` instructions; ``B`` past the end is clipped.

    Raises
    ------
    FlightgenError
        If the text is not a range or starts past the end.
    """
    first, colon, last = text.partition(":")
    try:
        start = int(first, 0) if first.strip() else 0
        stop = (int(last, 0) if last.strip() else None) if colon else start + 1
    except ValueError:
        raise FlightgenError(f"--range takes A:B (first and one past the last pc), not "
                             f"{text!r}") from None
    if start < 0 or (stop is not None and stop < start):
        raise FlightgenError(f"--range {text}: need 0 <= A <= B")
    if start >= max(count, 1):
        raise FlightgenError(f"--range {text} starts past the end of the program ({count} "
                             "instructions)")
    return start, count if stop is None else min(stop, count)


def disasm_lines(program, start=0, stop=None):
    """One line per instruction of ``program`` from pc ``start`` to ``stop`` (excluded):
    ``  123: load buffer=wgt ...``."""
    from .isa.assembly import disassemble_word

    count = len(program.words) // 32
    stop = count if stop is None else stop
    width = max(5, len(str(max(count - 1, 0))))
    return [f"{pc:>{width}}: "
            f"{disassemble_word(int.from_bytes(program.words[32 * pc:32 * pc + 32], 'little'))}"
            for pc in range(start, stop)]


def disasm_main(args, out=None):
    """Run the ``disasm`` verb; returns the exit status."""
    from .compiler.binary import read_binary

    out = out or sys.stdout
    binary = read_binary(args.binary)
    if args.bucket is None:
        buckets = sorted(p.bucket for p in binary.programs
                         if (p.core, p.phase) == (args.core, args.phase))
        if not buckets:
            present = ", ".join(p.name.removeprefix("program ") for p in binary.programs)
            raise FlightgenError(f"{args.binary}: no {args.phase} program for core {args.core} "
                                 f"(programs: {present or 'none'})")
        program = binary.program(args.core, args.phase, buckets[0])
    else:
        program = binary.program(args.core, args.phase, args.bucket)
    count = len(program.words) // 32
    start, stop = parse_range(args.range, count) if args.range else (0, count)
    which = f"bucket {program.bucket}" if program.bucket else "dynamic"
    print(f"# {args.binary}: core {program.core}, {program.phase} ({which}), {count} "
          "instructions", file=out)
    for line in disasm_lines(program, start, stop):
        print(line, file=out)
    return 0
