"""``flightgen cache``: what flightgen's cache folder holds, and pruning it.

The cache (:func:`flightgen.sim.runner.cache_dir`: ``$FLIGHTGEN_CACHE``, else
``$XDG_CACHE_HOME/flightgen`` or ``~/.cache/flightgen``) holds:

* ``verilator/``: Verilator models of the cocotb benches, one folder per design;
* ``harness/``: the C++ simulation harnesses of ``flightgen sim`` and ``demo``, one folder per
  design, and ``harness/index/``, which finds a harness without converting the core again;
* ``demo/``: the demo's compiled binaries;
* ``runs/``: the results of the most recent cocotb runs (kept to the newest few).

A build is a folder with a ``complete`` stamp; every reuse touches the stamp, so its time is
the build's last use. Each hardware or source change makes new builds (a design is keyed by
its Verilog), and the old ones stay until pruned: ``flightgen cache --prune DAYS`` removes the
builds and binaries not used for ``DAYS`` days (and index entries that lead nowhere);
``--clear`` removes everything. A build another process holds (its lock taken) is kept.
"""

import contextlib
import fcntl
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["add_parser", "main", "Entry", "entries", "prune", "KINDS"]

#: The cache's parts, in the order the summary lists them.
KINDS = ("verilator", "harness", "demo", "runs")

_DAY = 86400.0


@dataclass(frozen=True)
class Entry:
    """One build, binary or run: ``path``, ``kind`` (one of :data:`KINDS`), ``size`` in bytes,
    ``used`` (seconds since the epoch of its last use)."""

    path: Path
    kind: str
    size: int
    used: float


def _size(path):
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def entries(root):
    """Every :class:`Entry` under the cache folder ``root``."""
    found = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix == ".lock" or path.name == "index":
                continue
            stamp = path / "complete"
            used = (stamp if stamp.is_file() else path).stat().st_mtime
            found.append(Entry(path, kind, _size(path), used))
    return found


@contextlib.contextmanager
def _unless_busy(path):
    """Yield True with ``path``'s build lock taken, or False if another process holds it."""
    lock = path.with_name(path.name + ".lock")
    if not lock.exists():
        yield True
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prune(root, days, now=None):
    """Remove the entries under ``root`` not used for ``days`` days (all of them with
    ``days`` 0), their lock files and the harness index entries that no longer lead to a
    harness. Returns the removed :class:`Entry` list."""
    now = time.time() if now is None else now
    removed = []
    for entry in entries(root):
        if now - entry.used < days * _DAY:
            continue
        with _unless_busy(entry.path) as free:
            if not free:
                continue
            if entry.path.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                entry.path.unlink(missing_ok=True)
        entry.path.with_name(entry.path.name + ".lock").unlink(missing_ok=True)
        removed.append(entry)
    index = root / "harness" / "index"
    if index.is_dir():
        for pointer in index.iterdir():
            target = Path(pointer.read_text(errors="replace").strip() or ".")
            if not (target.parent / "complete").is_file():
                pointer.unlink(missing_ok=True)
    return removed


def _amount(size):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def add_parser(verbs):
    p = verbs.add_parser(
        "cache",
        help="Show what flightgen's cache holds (Verilator builds, binaries) and prune it.",
        description="Without options, print the cache folder and, for each part (Verilator "
                    "models, simulation harnesses, demo binaries, bench runs), how many "
                    "entries it holds, their size and how many were not used for 30 days. "
                    "Every hardware change builds new models; old ones stay until pruned.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prune", type=float, metavar="DAYS",
                      help="Remove the builds and binaries not used for DAYS days.")
    what.add_argument("--clear", action="store_true", help="Remove everything in the cache.")
    p.set_defaults(run=main)
    return p


def main(args, out=None):
    """Run the ``cache`` verb; returns the exit status."""
    from .errors import FlightgenError
    from .sim.runner import cache_dir

    out = out or sys.stdout
    root = cache_dir()
    if args.prune is not None and args.prune < 0:
        raise FlightgenError(f"--prune takes a number of days of at least 0, not {args.prune}")
    if args.clear or args.prune is not None:
        removed = prune(root, 0 if args.clear else args.prune)
        print(f"{root}: removed {len(removed)} entries, "
              f"{_amount(sum(e.size for e in removed))}", file=out)
    found = entries(root)
    now = time.time()
    print(f"{root}: {_amount(sum(e.size for e in found))} in {len(found)} entries", file=out)
    for kind in KINDS:
        mine = [e for e in found if e.kind == kind]
        if mine:
            stale = [e for e in mine if now - e.used >= 30 * _DAY]
            print(f"  {kind:<10} {len(mine):>4} entries {_amount(sum(e.size for e in mine)):>9}"
                  f"   {len(stale)} unused for 30 days ({_amount(sum(e.size for e in stale))})",
                  file=out)
    return 0
