import shutil

import pytest

from flightgen.compiler.frontends import load_model
from flightgen.compiler.models import DEFAULT_MODEL, ModelNotInstalled
from flightgen.sim.toolchain import ToolchainError, find_cxx, find_verilator


@pytest.fixture(scope="session")
def default_model_path():
    """Path of the default real model's GGUF, or a visible skip saying how to install it."""
    try:
        return DEFAULT_MODEL.locate()
    except ModelNotInstalled as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def smollm2(default_model_path):
    """The default real model (SmolLM2-135M-Instruct), loaded."""
    return load_model(default_model_path)


def _simulation_toolchain_problem():
    try:
        find_verilator()
        find_cxx()
    except ToolchainError as error:
        return str(error)
    if shutil.which("make") is None:
        return "make not found; Verilator builds need it (apt-get install make)"
    return None


def pytest_collection_modifyitems(config, items):
    """Skip Verilator benches, visibly and with the reason, when the toolchain is missing."""
    problem = None
    for item in items:
        if "verilator" in item.keywords:
            problem = problem or _simulation_toolchain_problem() or ""
            if problem:
                item.add_marker(pytest.mark.skip(reason=f"simulation toolchain: {problem}"))
