"""Run a benchmark script of ``scripts/`` as a user would, and read the JSON it writes."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name, arguments, output, timeout=1200):
    """Run ``scripts/<name>`` with ``arguments`` and ``-o output``; return ``(stdout, json)``.
    Fails the test with the script's output if it exits non-zero."""
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, arguments),
                           "-o", str(output)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(Path(output).read_text())
