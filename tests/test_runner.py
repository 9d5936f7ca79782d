"""Runner settings that need no simulator: seeds, waveform selection, run pruning."""

import os
import zlib

import pytest

from flightgen.errors import FlightgenError
from flightgen.sim import runner


def test_seed_defaults_to_a_stable_hash_of_the_name(monkeypatch):
    monkeypatch.delenv("FLIGHTGEN_SEED", raising=False)
    assert runner.resolve_seed("requant-l4") == zlib.crc32(b"requant-l4")
    assert runner.resolve_seed("requant-l4") != runner.resolve_seed("requant-l1")


def test_seed_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLIGHTGEN_SEED", "0x10")
    assert runner.resolve_seed("anything") == 16


def test_bad_seed_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FLIGHTGEN_SEED", "tuesday")
    with pytest.raises(FlightgenError, match=r"^FLIGHTGEN_SEED must be an integer, not 'tuesday'$"):
        runner.resolve_seed("x")


@pytest.mark.parametrize(("value", "expected"), [("", None), ("VCD", "vcd"), ("fst", "fst")])
def test_waves_format(monkeypatch, value, expected):
    monkeypatch.setenv("FLIGHTGEN_WAVES", value)
    assert runner.waves_format() == expected


def test_bad_waves_format_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FLIGHTGEN_WAVES", "gif")
    message = r"^FLIGHTGEN_WAVES must be one of fst, vcd, not 'gif'$"
    with pytest.raises(FlightgenError, match=message):
        runner.waves_format()


def test_old_bench_runs_are_pruned(tmp_path):
    for n in range(5):
        (tmp_path / f"run{n}").mkdir()
        os.utime(tmp_path / f"run{n}", (n, n))
    runner._prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run3", "run4"]
