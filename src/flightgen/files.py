"""Writing output files atomically: a reader (or an interrupted run) never sees half a file."""

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "hash_sources"]


def hash_sources(digest, *modules):
    """Feed ``digest`` (a hashlib object) with the name and bytes of every ``.py`` file of
    each module's folder (a package) or of the module itself, in a stable order: the key of
    a cache that must change whenever the code that made its contents changes."""
    for module in modules:
        path = Path(module.__file__)
        files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        for source in files:
            digest.update(source.name.encode() + b"\0" + source.read_bytes())


def write_atomic(path, data):
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, mode) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
