"""``flightgen perf``: projected decode speed of a model on a board (the cycle model over the
compiled programs, :mod:`flightgen.sim.projection`), with a roofline plot."""

import json
import sys
from pathlib import Path

from .errors import FlightgenError
from .progress import progress

__all__ = ["add_parser", "main", "roofline_png"]


def add_parser(verbs, positive):
    """Add the ``perf`` verb to the CLI's subparsers."""
    from .boards.alveo import BOARDS
    from .compile import MODEL_CONFIGS

    p = verbs.add_parser(
        "perf",
        help="Project a model's decode speed on a board (cycle model, roofline plot).",
        description="Compile a model shape (config-only) for a board's full-size "
                    "configuration, run the cycle model over every core's decode program at a "
                    "context length, and report tokens/s, HBM bytes per token, the HBM "
                    "roofline, HBM and DSP utilisation and prefill latency; write a roofline "
                    "plot (PNG) and the figures (JSON).",
    )
    p.add_argument("--model", default="llama2-7b", metavar="CONFIG",
                   help=f"One of {', '.join(MODEL_CONFIGS)} or a Hugging Face config.json "
                        "(default llama2-7b).")
    p.add_argument("--board", default="u280", choices=sorted(BOARDS), help="Default u280.")
    p.add_argument("--weights", default="int4-g32-sym", metavar="FORMAT",
                   help="Weight format (default int4-g32-sym; int8-g32-sym for W8).")
    p.add_argument("--sparsity", metavar="N:M",
                   help="Prune the FFN matrices N:M (e.g. 8:16).")
    p.add_argument("--parallel", choices=["layers", "tensor"], default="tensor",
                   help="How the board's cores share the model: 'tensor' (default: all at "
                        "once, each on its share of every layer, meeting at barriers) or "
                        "'layers' (a layer pipeline, one core at a time).")
    p.add_argument("--context", type=positive, default=512,
                   help="Context length of the decode step (default 512).")
    p.add_argument("--prompt", type=positive, default=128,
                   help="Prompt length for the prefill latency (default 128).")
    p.add_argument("--png", default="roofline.png", metavar="PATH",
                   help="Where to write the roofline plot (default roofline.png).")
    p.add_argument("--json", default="perf.json", metavar="PATH",
                   help="Where to write the figures (default perf.json).")
    p.set_defaults(run=main)
    return p


#: How ``flightgen perf`` names the units and the causes of their idle cycles.
_UNIT_NAMES = {"matrix": "matrix engine", "vector": "vector unit", "load": "load unit",
               "store": "store unit"}
_CAUSES = {"load": "loads", "store": "stores", "matrix": "the matrix engine",
           "vector": "the vector unit", "sys": "barriers", "dispatch": "dispatch"}


def _unit_rows(p, target):
    """Rows of where the decode step's cycles go (``Projection.units``): each unit's busy
    cycles and what it waited for while idle."""
    whose = "the slowest core's" if target.tensor else "the cores' (summed)"
    rows = [("units", f"{whose} busy cycles, and idle cycles by what they waited for")]
    for name, label in _UNIT_NAMES.items():
        unit = p.units[name]
        text = f"busy {unit['busy']:,} ({unit['busy'] / p.cycles:.1%})"
        waits = [f"{_CAUSES[cause]} {idle:,}" for cause, idle in unit["waits"].items()
                 if idle >= 0.005 * p.cycles]
        if waits:
            text += "; idle for " + ", ".join(waits)
        rows.append((f"  {label}", text))
    return rows


def roofline_png(projection, board, target, path):
    """Draw the roofline of ``board`` with ``target`` and the decode step of ``projection``
    to ``path`` (PNG): attainable MAC/s against operational intensity (MAC per HBM byte)."""
    import io

    import matplotlib

    from .files import write_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    hz = target.clock_mhz * 1e6
    peak = target.cores * target.core.geometry.macs * hz  # MAC/s
    bandwidth = projection.hbm_gbps * 1e9  # B/s
    intensity = np.logspace(-2, 3, 200)
    attainable = np.minimum(peak, bandwidth * intensity)
    point_x = projection.macs / projection.hbm_bytes
    point_y = projection.macs * projection.tokens_per_s
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.loglog(intensity, attainable / 1e9, label=f"roofline: {bandwidth / 1e9:.0f} GB/s HBM, "
                                                   f"{peak / 1e9:.0f} GMAC/s")
    axes.loglog([point_x], [point_y / 1e9], "o",
                label=f"{projection.model} decode ({projection.weights}, {projection.sparsity}): "
                      f"{projection.tokens_per_s:.1f} tok/s")
    axes.set_xlabel("operational intensity (MAC per HBM byte)")
    axes.set_ylabel("GMAC/s")
    axes.set_title(f"{board.name}: {target.cores} cores at {target.clock_mhz:.0f} MHz")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    plt.close(figure)
    write_atomic(path, image.getvalue())


def main(args, out=None, err=None):
    """Run the ``perf`` verb; returns the exit status."""
    from .boards.alveo import get_board
    from .compile import _config_only
    from .compiler.passes import CompileConfig
    from .compiler.target import board_target
    from .files import write_atomic
    from .sim.projection import HBM_EFFICIENCY, project

    out, err = out or sys.stdout, err or sys.stderr
    say = progress(err)

    board = get_board(args.board)
    target = board_target(board, args.parallel)
    model = _config_only(args.model)
    for path in (args.png, args.json):
        if not Path(path).parent.is_dir():
            raise FlightgenError(f"{Path(path).parent}: no such folder")
    config = CompileConfig(weights=args.weights, sparsity=args.sparsity)
    p = project(args.model, model, board, target, config, args.context, args.prompt, say)
    rows = [
        ("decode step", f"{p.cycles:,} cycles " + (
            f"(the slowest of {', '.join(f'{c:,}' for c in p.core_cycles)}: tensor parallel)"
            if target.tensor else
            f"({' + '.join(f'{c:,}' for c in p.core_cycles)}: a layer pipeline)")),
        ("decode speed", f"{p.tokens_per_s:.1f} tokens/s at {p.clock_mhz:.0f} MHz"),
        ("HBM traffic", f"{p.hbm_bytes / 1e6:.1f} MB per token"),
        ("HBM roofline", f"{p.roofline_tokens_per_s:.1f} tokens/s ({p.hbm_gbps:.0f} GB/s: "
                         f"{target.cores * target.local_ports} channels x "
                         f"{board.hbm.channel_gbps} GB/s x {HBM_EFFICIENCY})"),
        ("of the roofline", f"{p.tokens_per_s / p.roofline_tokens_per_s:.1%}"),
        ("HBM utilisation", f"{p.hbm_utilisation:.1%} of the connected ports"),
        ("DSP utilisation", f"{p.dsp_utilisation:.1%} of {target.cores} x "
                            f"{target.core.geometry.macs} MACs/cycle"),
        *_unit_rows(p, target),
        ("prefill", f"{p.prefill_ms:,.0f} ms for {p.prefill_tokens} tokens (token-serial)"),
        ("instructions", f"{p.instruction_mb:.2f} MB"),
    ]
    print(f"{p.model} on {board.name} ({p.weights}, {p.sparsity}, context {p.context}):",
          file=out)
    for name, value in rows:
        print(f"  {name:<16} {value}", file=out)
    write_atomic(args.json, (json.dumps(p.to_dict(), indent=2) + "\n").encode())
    try:
        roofline_png(p, board, target, args.png)
        print(f"wrote {args.json} and {args.png}", file=out)
    except ImportError:
        print(f"wrote {args.json}; no plot: matplotlib is not installed", file=out)
    return 0
