"""The model binary (``.fgb``): everything a host needs to run one compiled model.

A binary holds the hardware configuration it was compiled for, the compile and model
configurations, the host's layout (addresses, register conventions), one instruction stream per
core, phase and context bucket, the bytes of every HBM channel, the tokenizer and free-form
metadata. The file format is described in ``docs/binary-format.md``.

Reading checks everything: a truncated, corrupt (any flipped bit), foreign or newer file raises
:class:`BinaryError` with one line naming the file and the problem. Writing is atomic: a reader
(or an interrupted compile) never sees half a file.
"""

import contextlib
import hashlib
import json
import os
import secrets
import struct
import zlib
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np

from ..errors import FlightgenError
from ..isa.instructions import WORD_BYTES
from ..isa.machine import CoreConfig

__all__ = ["FORMAT_VERSION", "MAGIC", "ALIGNMENT", "PHASES", "BinaryError", "Program", "Image",
           "Binary", "write_binary", "read_binary", "read_header", "check_target"]

#: Version of the file format this module reads and writes.
FORMAT_VERSION = 1
#: First 8 bytes of every binary.
MAGIC = b"FLIGHTGN"
#: Every section starts at a multiple of this many bytes (so images can be memory-mapped).
ALIGNMENT = 4096
#: Program phases.
PHASES = ("prefill", "decode")

# Magic, format version, header length, header CRC-32, reserved (0).
_PREAMBLE = struct.Struct("<8sIIII")
_CHUNK = 1 << 24
_HEADER_KEYS = ("target", "config", "model", "layout", "metadata", "tokenizer_section",
                "sections")
_OBJECT_KEYS = ("target", "config", "model", "layout", "metadata")
_KINDS = ("program", "image", "tokenizer")
_PLACEHOLDER = "0" * 64
_HEX = frozenset("0123456789abcdef")


class BinaryError(FlightgenError):
    """A model binary is missing, malformed, truncated, corrupt, unsupported or built for other
    hardware."""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _nbytes(data):
    return memoryview(data).nbytes


def _fill_problem(fill):
    """Why ``fill`` is not a fill this version knows, or None."""
    if not isinstance(fill, dict):
        return f"fill must be an object, not {fill!r}"
    if fill.get("kind") != "random":
        return f"unknown fill kind {fill.get('kind')!r} (this flightgen knows 'random')"
    if set(fill) != {"kind", "seed"} or not _is_count(fill["seed"]):
        return f"a random fill is {{'kind': 'random', 'seed': int >= 0}}, not {fill!r}"
    return None


def _align(position):
    return -(-position // ALIGNMENT) * ALIGNMENT


@dataclass
class Program:
    """The instruction stream of one core for one phase and context bucket.

    Members
    -------
    core : int
        Core index, ``0`` to ``cores - 1``.
    phase : str
        ``"prefill"`` or ``"decode"``.
    bucket : int
        ``0`` for a dynamic program (serves every context length; reads the length registers),
        otherwise the longest context length this program serves.
    words : bytes
        The instructions, 32 bytes each (one 256-bit word, little-endian).

    Raises
    ------
    ValueError
        If a member is out of range or ``words`` is not whole instructions.
    """

    core: int
    phase: str
    bucket: int
    words: bytes

    def __post_init__(self):
        if not _is_count(self.core):
            raise ValueError(f"core must be a non-negative integer, not {self.core!r}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be 'prefill' or 'decode', not {self.phase!r}")
        if not _is_count(self.bucket):
            raise ValueError(f"bucket must be a non-negative integer, not {self.bucket!r}")
        if not isinstance(self.words, (bytes, bytearray, memoryview)):
            raise ValueError(f"words must be bytes, not {type(self.words).__name__}")
        if _nbytes(self.words) % WORD_BYTES:
            raise ValueError(f"words must be whole {WORD_BYTES}-byte instructions, not "
                             f"{_nbytes(self.words)} bytes")

    @property
    def name(self):
        """The name of this program's section: ``program core0 decode`` (dynamic) or
        ``program core0 prefill bucket 128``."""
        bucket = f" bucket {self.bucket}" if self.bucket else ""
        return f"program core{self.core} {self.phase}{bucket}"


@dataclass
class Image:
    """The initial contents of one HBM pseudo-channel.

    Members
    -------
    channel : int
        Global pseudo-channel index; the bytes are placed from address 0 of that channel.
    data : bytes or None
        The bytes, or None when ``fill`` says how to make them.
    size : int
        Bytes (equal to ``len(data)`` when ``data`` is given).
    fill : dict or None
        ``{"kind": "random", "seed": int}``: the bytes are
        ``numpy.random.default_rng(seed).integers(0, 256, size, dtype=numpy.uint8)``. Binaries
        compiled without weights (to measure the hardware) store no image bytes.

    Raises
    ------
    ValueError
        If neither or both of ``data`` and ``fill`` are given, ``size`` does not match
        ``data``, or ``fill`` is not a known fill.
    """

    channel: int
    data: bytes | None
    size: int
    fill: dict | None = None

    def __post_init__(self):
        if not _is_count(self.channel):
            raise ValueError(f"channel must be a non-negative integer, not {self.channel!r}")
        if not _is_count(self.size):
            raise ValueError(f"size must be a non-negative integer, not {self.size!r}")
        if (self.data is None) == (self.fill is None):
            raise ValueError("an image has either data or a fill, not "
                             f"{'both' if self.data is not None else 'neither'}")
        if self.data is not None and _nbytes(self.data) != self.size:
            raise ValueError(f"image of channel {self.channel} has {_nbytes(self.data)} bytes "
                             f"of data but size {self.size}")
        if self.fill is not None and (problem := _fill_problem(self.fill)):
            raise ValueError(problem)

    @property
    def name(self):
        """The name of this image's section: ``hbm channel 3``."""
        return f"hbm channel {self.channel}"


@dataclass
class Binary:
    """A compiled model.

    The five dictionaries must be JSON-serialisable; they are stored as JSON, so tuples come
    back as lists and non-string keys as strings.

    Members
    -------
    target : dict
        The hardware configuration it was compiled for; at least ``"name"``, ``"cores"`` and
        ``"core"`` (the :class:`~flightgen.isa.machine.CoreConfig` fields).
    config : dict
        The compile configuration.
    model : dict
        The model's :class:`~flightgen.compiler.model.LlamaConfig` fields.
    layout : dict
        What the host needs to run the programs (addresses, register conventions).
    programs : list of Program
        At most one per ``(core, phase, bucket)``.
    images : list of Image
        At most one per channel.
    tokenizer : str or None
        A Hugging Face ``tokenizer.json``.
    metadata : dict
        Anything else worth keeping (flightgen version, source file, passes, timings).
    source : str or None
        The file it was read from (not compared, not a constructor argument).
    """

    target: dict
    config: dict
    model: dict
    layout: dict
    programs: list
    images: list
    tokenizer: str | None
    metadata: dict
    source: str | None = field(default=None, init=False, compare=False, repr=False)

    def program(self, core, phase, bucket=0):
        """The program of ``core`` for ``phase`` and ``bucket`` (0: the dynamic one).

        Raises
        ------
        BinaryError
            If the binary has no such program; the message lists the ones it has.
        """
        for program in self.programs:
            if (program.core, program.phase, program.bucket) == (core, phase, bucket):
                return program
        which = f"bucket {bucket}" if bucket else "dynamic"
        present = ", ".join(p.name.removeprefix("program ") for p in self.programs) or "none"
        raise BinaryError(f"{self.source or 'binary'}: no {phase} program ({which}) for core "
                          f"{core} (programs: {present})")

    def image_bytes(self, image):
        """The bytes of ``image`` (an :class:`Image` or a channel index) as a ``uint8`` array:
        its data (read-only), or the bytes its fill makes."""
        if not isinstance(image, Image):
            matches = [i for i in self.images if i.channel == image]
            if not matches:
                raise BinaryError(f"{self.source or 'binary'}: no image for channel {image!r}")
            image = matches[0]
        if image.data is not None:
            return np.frombuffer(image.data, dtype=np.uint8)
        rng = np.random.default_rng(image.fill["seed"])
        return rng.integers(0, 256, image.size, dtype=np.uint8)


# --- writing -------------------------------------------------------------------------------------

def _json_object(binary, key):
    value = getattr(binary, key)
    if not isinstance(value, dict):
        raise ValueError(f"binary.{key} must be a dict, not {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"binary.{key} is not JSON-serialisable: {error}") from None
    return value


def _plan(binary):
    """Header section entries (without offsets) and their payloads, in file order."""
    for key in _OBJECT_KEYS:
        _json_object(binary, key)
    entries, payloads, keys, channels = [], [], set(), set()
    for program in binary.programs:
        if not isinstance(program, Program):
            raise ValueError(f"binary.programs holds a {type(program).__name__}, not a Program")
        key = (program.core, program.phase, program.bucket)
        if key in keys:
            raise ValueError(f"two programs for core {program.core}, {program.phase}, bucket "
                             f"{program.bucket}")
        keys.add(key)
        entries.append({"name": program.name, "kind": "program", "size": _nbytes(program.words),
                        "core": program.core, "phase": program.phase, "bucket": program.bucket})
        payloads.append(program.words)
    if binary.tokenizer is not None:
        if not isinstance(binary.tokenizer, str):
            raise ValueError(f"binary.tokenizer must be a str or None, not "
                             f"{type(binary.tokenizer).__name__}")
        payload = binary.tokenizer.encode("utf-8")
        entries.append({"name": "tokenizer", "kind": "tokenizer", "size": len(payload)})
        payloads.append(payload)
    for image in binary.images:
        if not isinstance(image, Image):
            raise ValueError(f"binary.images holds a {type(image).__name__}, not an Image")
        if image.channel in channels:
            raise ValueError(f"two images for HBM channel {image.channel}")
        channels.add(image.channel)
        entries.append({"name": image.name, "kind": "image", "size": image.size,
                        "channel": image.channel, "fill": image.fill})
        payloads.append(image.data)
    return entries, payloads


def _header_bytes(binary, entries):
    header = {key: getattr(binary, key) for key in _OBJECT_KEYS}
    header["tokenizer_section"] = "tokenizer" if binary.tokenizer is not None else None
    header["sections"] = entries
    return json.dumps(header, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _place(binary, entries, payloads):
    """Give every stored section its offset; return the header (with placeholder checksums)."""
    start = ALIGNMENT
    while True:
        position = start
        for entry, payload in zip(entries, payloads, strict=True):
            if payload is None:
                entry["offset"] = entry["sha256"] = None
            else:
                entry["offset"] = position = _align(position)
                entry["sha256"] = _PLACEHOLDER
                position += entry["size"]
        header = _header_bytes(binary, entries)
        needed = _align(_PREAMBLE.size + len(header))
        if needed <= start:
            return header
        start = needed


def _chunks(payload):
    view = memoryview(payload).cast("B")
    for start in range(0, len(view), _CHUNK):
        yield view[start:start + _CHUNK]


def _preamble(header):
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header), 0)


def _create_temporary(path):
    """A new file next to ``path`` (created with the umask's permissions); its name and fd."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            return temporary, os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def write_binary(path, binary, progress=None):
    """Write ``binary`` to ``path`` atomically.

    The file is written to a temporary file in the same folder, synced, and renamed over
    ``path``; on any failure (including ``KeyboardInterrupt``) the temporary file is removed
    and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
    binary : Binary
    progress : callable or None
        Called as ``progress(done_bytes, total_bytes)`` as the file is written.

    Raises
    ------
    ValueError
        If ``binary`` is not a valid binary (duplicate programs or channels, a dictionary that
        is not JSON-serialisable...).
    BinaryError
        If the file cannot be written.
    """
    path = Path(path)
    entries, payloads = _plan(binary)
    header = _place(binary, entries, payloads)
    stored = [(entry, payload) for entry, payload in zip(entries, payloads, strict=True)
              if payload is not None]
    total = max([_PREAMBLE.size + len(header)] +
                [entry["offset"] + entry["size"] for entry, _ in stored])
    if not path.parent.is_dir():
        raise BinaryError(f"{path}: cannot write: no such folder {path.parent}")
    try:
        temporary, descriptor = _create_temporary(path)
    except OSError as error:
        raise BinaryError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(_preamble(header))
            file.write(header)
            done = file.tell()
            if progress is not None:
                progress(done, total)
            for entry, payload in stored:
                file.write(bytes(entry["offset"] - done))
                done = entry["offset"]
                digest = hashlib.sha256()
                for chunk in _chunks(payload):
                    digest.update(chunk)
                    file.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                entry["sha256"] = digest.hexdigest()
            final = _header_bytes(binary, entries)
            assert len(final) == len(header)  # only the fixed-width checksums changed
            file.seek(0)
            file.write(_preamble(final))
            file.write(final)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise BinaryError(f"{path}: cannot write ({error.strerror or error})") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# --- reading -------------------------------------------------------------------------------------

def _open(path):
    try:
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError:
        raise BinaryError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BinaryError(f"{path}: is a folder, not a flightgen binary") from None
    except OSError as error:
        raise BinaryError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_exact(file, size, source, what):
    data = file.read(size)
    if len(data) != size:
        raise BinaryError(f"{source}: truncated: {what} (the file shrank while being read)")
    return data


def _check_entry(entry, index, source):
    """Raise a BinaryError if section ``entry`` is malformed."""
    def fail(problem):
        raise BinaryError(f"{source}: corrupt header: section {label}: {problem}")

    label = f"{index}"
    if not isinstance(entry, dict):
        fail("not an object")
    name = entry.get("name")
    if not isinstance(name, str):
        fail("no name")
    label = f"{name!r}"
    kind = entry.get("kind")
    if kind not in _KINDS:
        fail(f"unknown kind {kind!r}")
    required = {"program": ("core", "phase", "bucket"), "image": ("channel", "fill"),
                "tokenizer": ()}[kind]
    for key in ("offset", "size", "sha256", *required):
        if key not in entry:
            fail(f"no {key!r}")
    if not _is_count(entry["size"]):
        fail(f"size {entry['size']!r} is not a byte count")
    stored = not (kind == "image" and entry["fill"] is not None)
    if stored:
        if not _is_count(entry["offset"]):
            fail(f"offset {entry['offset']!r} is not a byte offset")
        digest = entry["sha256"]
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            fail(f"sha256 {digest!r} is not a SHA-256 digest")
    elif entry["offset"] is not None or entry["sha256"] is not None:
        fail("a filled image has no offset or sha256")
    if kind == "program":
        if not (_is_count(entry["core"]) and _is_count(entry["bucket"])
                and entry["phase"] in PHASES):
            fail("core, phase or bucket out of range")
        if entry["size"] % WORD_BYTES:
            raise BinaryError(f"{source}: program section {name!r} has {entry['size']} bytes, "
                              f"not a multiple of {WORD_BYTES} (one instruction)")
    if kind == "image":
        if not _is_count(entry["channel"]):
            fail(f"channel {entry['channel']!r} is not a channel index")
        if entry["fill"] is not None and (problem := _fill_problem(entry["fill"])):
            fail(problem)


def _check_sections(header, header_end, file_size, source):
    """Check the section table against itself and the file; return the stored sections."""
    sections = header["sections"]
    names, keys = set(), set()
    for index, entry in enumerate(sections):
        _check_entry(entry, index, source)
        name, kind = entry["name"], entry["kind"]
        key = ((kind, entry["core"], entry["phase"], entry["bucket"]) if kind == "program" else
               (kind, entry["channel"]) if kind == "image" else (kind, name))
        if name in names or key in keys:
            raise BinaryError(f"{source}: corrupt header: section {name!r} appears twice")
        names.add(name)
        keys.add(key)
    tokenizers = [entry["name"] for entry in sections if entry["kind"] == "tokenizer"]
    if tokenizers != ([header["tokenizer_section"]] if header["tokenizer_section"] is not None
                      else []):
        raise BinaryError(f"{source}: corrupt header: tokenizer_section "
                          f"{header['tokenizer_section']!r} does not match the sections")
    stored = [entry for entry in sections if entry["offset"] is not None]
    end = header_end
    for entry in stored:
        if entry["offset"] % ALIGNMENT:
            raise BinaryError(f"{source}: corrupt header: section {entry['name']!r} starts at "
                              f"byte {entry['offset']}, not a multiple of {ALIGNMENT}")
        if entry["offset"] < end:
            raise BinaryError(f"{source}: corrupt header: section {entry['name']!r} starts at "
                              f"byte {entry['offset']}, before the end of what precedes it "
                              f"(byte {end})")
        end = entry["offset"] + entry["size"]
        if end > file_size:
            raise BinaryError(f"{source}: truncated: section {entry['name']!r} ends at byte "
                              f"{end} but the file has {file_size} bytes")
    if file_size > end:
        raise BinaryError(f"{source}: corrupt file: {file_size - end} unexpected bytes after "
                          f"byte {end}, where the last section ends")
    return stored


def _read_header(file, source):
    """Read and check the preamble, header and section table; return the header, the stored
    sections (in file order) and the offset where the header ends."""
    try:
        file_size = os.fstat(file.fileno()).st_size
        start = file.read(_PREAMBLE.size)
    except OSError as error:
        raise BinaryError(f"{source}: cannot read ({error.strerror or error})") from None
    if not start:
        raise BinaryError(f"{source}: empty file, not a flightgen binary")
    if start[:len(MAGIC)] != MAGIC[:len(start)]:
        raise BinaryError(f"{source}: not a flightgen binary (bad magic)")
    if len(start) < _PREAMBLE.size:
        raise BinaryError(f"{source}: truncated: the file has {len(start)} bytes, shorter than "
                          f"the {_PREAMBLE.size}-byte preamble")
    _, version, length, crc, reserved = _PREAMBLE.unpack(start)
    if version != FORMAT_VERSION:
        raise BinaryError(f"{source}: format version {version} is not supported (this "
                          f"flightgen reads version {FORMAT_VERSION})")
    if reserved:
        raise BinaryError(f"{source}: corrupt preamble: the reserved field is {reserved:#x}, "
                          f"not 0")
    header_end = _PREAMBLE.size + length
    if header_end > file_size:
        raise BinaryError(f"{source}: truncated: the header ends at byte {header_end} but the "
                          f"file has {file_size} bytes")
    raw = _read_exact(file, length, source, "the header")
    if zlib.crc32(raw) != crc:
        raise BinaryError(f"{source}: header checksum mismatch (corrupt file)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BinaryError(f"{source}: corrupt header: not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise BinaryError(f"{source}: corrupt header: not a JSON object")
    for key in _HEADER_KEYS:
        if key not in header:
            raise BinaryError(f"{source}: corrupt header: no {key!r}")
    for key in _OBJECT_KEYS:
        if not isinstance(header[key], dict):
            raise BinaryError(f"{source}: corrupt header: {key!r} is not an object")
    if not isinstance(header["sections"], list):
        raise BinaryError(f"{source}: corrupt header: 'sections' is not a list")
    return header, _check_sections(header, header_end, file_size, source), header_end


def read_header(path):
    """The header of the binary at ``path`` (a dict, as stored), after checking the preamble,
    the header's checksum and the section table against the file's size. Section contents are
    neither read nor verified.

    Raises
    ------
    BinaryError
        As :func:`read_binary`, except for section checksums and the target.
    """
    source = Path(path)
    with _open(source) as file:
        return _read_header(file, source)[0]


def read_binary(path, target=None, verify=True):
    """Read the binary at ``path``.

    Parameters
    ----------
    path : path-like
    target : dict or None
        The hardware configuration here (a dict like :attr:`Binary.target`, or an object with
        ``to_dict()``); if given, the binary must have been compiled for it
        (:func:`check_target`).
    verify : bool
        Check every section's SHA-256 and that the padding between sections is zero. With
        ``verify=False`` a flipped bit inside a section goes unnoticed.

    Raises
    ------
    BinaryError
        If the file is missing or unreadable, not a flightgen binary, another format version,
        truncated, corrupt, or built for another target. The message is one line naming the
        file and the problem.
    """
    source = Path(path)
    with _open(source) as file:
        header, stored, position = _read_header(file, source)
        if target is not None:
            check_target(header["target"], target, source)
        contents = {}
        try:
            for entry in stored:
                name, offset = entry["name"], entry["offset"]
                if verify:
                    padding = _read_exact(file, offset - position, source, "padding")
                    if padding != bytes(len(padding)):
                        raise BinaryError(f"{source}: corrupt padding before section {name!r} "
                                          f"(bytes {position} to {offset} must be zero)")
                else:
                    file.seek(offset)
                data = _read_exact(file, entry["size"], source, f"section {name!r}")
                if verify:
                    digest = hashlib.sha256()
                    for chunk in _chunks(data):
                        digest.update(chunk)
                    if digest.hexdigest() != entry["sha256"]:
                        raise BinaryError(f"{source}: checksum mismatch in section {name!r}")
                contents[name] = data
                position = offset + entry["size"]
        except OSError as error:
            raise BinaryError(f"{source}: cannot read ({error.strerror or error})") from None

    programs, images, tokenizer = [], [], None
    for entry in header["sections"]:
        data = contents.get(entry["name"])
        if entry["kind"] == "program":
            programs.append(Program(entry["core"], entry["phase"], entry["bucket"], data))
        elif entry["kind"] == "image":
            images.append(Image(entry["channel"], data, entry["size"], entry["fill"]))
        else:
            try:
                tokenizer = data.decode("utf-8")
            except UnicodeDecodeError:
                raise BinaryError(f"{source}: the tokenizer is not valid UTF-8") from None
    binary = Binary(header["target"], header["config"], header["model"], header["layout"],
                    programs, images, tokenizer, header["metadata"])
    binary.source = str(source)
    return binary


# --- targets -------------------------------------------------------------------------------------

def _as_dict(target):
    if isinstance(target, dict):
        core = target.get("core")
        if isinstance(core, dict):  # fields a binary predates take their defaults
            with contextlib.suppress(TypeError, ValueError):
                target = {**target, "core": CoreConfig(**core).to_dict()}
        return target
    if hasattr(target, "to_dict"):
        return target.to_dict()
    if is_dataclass(target) and not isinstance(target, type):
        return asdict(target)
    raise TypeError(f"a target is a dict or has to_dict(), not {type(target).__name__}")


def _show(value):
    return repr(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


#: Top-level target fields a program does not depend on: the preset's name and the clock
#: (which only the performance figures use).
_NOT_HARDWARE = ("name", "clock_mhz")


def _difference(there, here, path):
    """The first difference between the binary's value and this one, worded, or None."""
    if isinstance(there, dict) and isinstance(here, dict):
        for key in [*there, *(key for key in here if key not in there)]:
            if not path and key in _NOT_HARDWARE:
                continue  # equal parameters run the same binaries
            where = f"{path}.{key}" if path else str(key)
            if key not in here:
                return f"{where} is {_show(there[key])} in the binary and not set here"
            if key not in there:
                return f"{where} is not set in the binary and {_show(here[key])} here"
            if (found := _difference(there[key], here[key], where)) is not None:
                return found
        return None
    if isinstance(there, (list, tuple)) and isinstance(here, (list, tuple)):
        if len(there) != len(here):
            return f"{path} has {len(there)} entries in the binary, {len(here)} here"
        for index, (a, b) in enumerate(zip(there, here, strict=True)):
            if (found := _difference(a, b, f"{path}[{index}]")) is not None:
                return found
        return None
    if there != here or isinstance(there, bool) != isinstance(here, bool):
        return f"{path} is {_show(there)} in the binary, {_show(here)} here"
    return None


def check_target(binary_target, target, source):
    """Check that a binary compiled for ``binary_target`` runs on ``target``.

    Every field must be equal, recursively, except the top-level ``"name"`` and
    ``"clock_mhz"``: the instructions and the HBM images do not depend on them.

    Parameters
    ----------
    binary_target : dict
        :attr:`Binary.target`.
    target : dict
        The hardware here (or an object with ``to_dict()``).
    source : str or path-like
        The binary's file, for the message.

    Raises
    ------
    BinaryError
        Naming the first differing field (dotted path, e.g. ``core.line_bits``) and both
        values.
    """
    found = _difference(_as_dict(binary_target), _as_dict(target), "")
    if found is not None:
        raise BinaryError(f"{source}: built for a different hardware configuration: {found}")
