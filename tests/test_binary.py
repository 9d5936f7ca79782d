"""The model binary (.fgb): round trip, every kind of damage, atomic writes, inspect and disasm."""

import json
import re
import struct
import zlib

import numpy as np
import pytest

from flightgen import cli
from flightgen.compiler import binary as fgb
from flightgen.compiler.binary import (
    ALIGNMENT,
    FORMAT_VERSION,
    MAGIC,
    Binary,
    BinaryError,
    Image,
    Program,
    check_target,
    read_binary,
    read_header,
    write_binary,
)
from flightgen.isa.assembly import assemble, disassemble_word
from flightgen.isa.machine import CoreConfig

SEED = 20240607


def words(text):
    return b"".join(word.to_bytes(32, "little") for word in assemble(text))


def random_program(rng, length):
    """``length`` real instructions (loads and stores at random places), then ``halt``."""
    lines = []
    for _ in range(length):
        kind = rng.choice(["load", "store"])
        buffer = rng.choice(["vec", "act", "wgt", "meta"]) if kind == "load" else "vec"
        lines.append(f"{kind} buffer={buffer} line={rng.integers(0, 64)} port="
                     f"{rng.integers(0, 2)} addr={int(rng.integers(0, 1 << 20)) * 32:#x} "
                     f"length={rng.integers(1, 64)}")
    return words("\n".join([*lines, "sync wait=load,store", "halt"]))


def target(**core):
    return {"name": "test-2core", "cores": 2, "core": CoreConfig(**core).to_dict(),
            "hbm": {"channels": [0, 1, 2, 3], "channel_bytes": 1 << 28}}


def make_binary(tokenizer='{"model": {"type": "BPE", "vocab": {"é": 0}}}'):
    rng = np.random.default_rng(SEED)
    programs = [
        Program(0, "decode", 0, words("load buffer=vec line=0 port=0 addr=0 length=1\nhalt")),
        Program(0, "prefill", 64, random_program(rng, 20)),
        Program(0, "prefill", 16, random_program(rng, 5)),
        Program(1, "decode", 0, random_program(rng, 40)),
    ]
    images = [Image(1, rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), 3000),
              Image(2, None, 5000, {"kind": "random", "seed": 7})]
    return Binary(
        target=target(),
        config={"mode": "decode+prefill", "quantization": {"weights": "int8", "group": 32},
                "capacity": 1024, "buckets": [16, 64]},
        model={"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128,
               "vocab_size": 256, "context_length": 128, "rope_theta": 10000.0,
               "norm_eps": 1e-5, "tied_embeddings": True},
        layout={"kv_cache": {"channel": 1, "address": 4096}, "registers": {"length": 1}},
        programs=programs, images=images, tokenizer=tokenizer,
        metadata={"flightgen": "test", "passes": ["a", "b"], "seconds": 0.25})


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "model.fgb"
    write_binary(path, make_binary())
    return path


def rewrite_header(path, change):
    """Rewrite the header with ``change(header)`` applied, with a valid CRC, in place."""
    data = bytearray(path.read_bytes())
    length = struct.unpack_from("<I", data, 12)[0]
    header = json.loads(data[24:24 + length])
    change(header)
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    first = min(s["offset"] for s in read_header(path)["sections"] if s["offset"] is not None)
    assert 24 + len(raw) <= first
    data[:first] = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, len(raw), zlib.crc32(raw), 0) \
        + raw + bytes(first - 24 - len(raw))
    path.write_bytes(bytes(data))


# --- round trip ----------------------------------------------------------------------------------

def test_round_trip_keeps_every_field(written):
    original = make_binary()
    loaded = read_binary(written)
    assert loaded == original
    assert loaded.source == str(written)
    for mine, theirs in zip(loaded.images, original.images, strict=True):
        np.testing.assert_array_equal(loaded.image_bytes(mine), original.image_bytes(theirs))
    assert isinstance(loaded.programs[0].words, bytes)
    assert loaded.model["norm_eps"] == 1e-5 and loaded.tokenizer == original.tokenizer


def test_without_tokenizer_or_images(tmp_path):
    original = make_binary(tokenizer=None)
    original.images = []
    write_binary(tmp_path / "m.fgb", original)
    assert read_binary(tmp_path / "m.fgb") == original
    assert read_header(tmp_path / "m.fgb")["tokenizer_section"] is None


def test_fill_is_regenerated_deterministically(written):
    loaded = read_binary(written)
    fill = loaded.images[1]
    assert fill.data is None
    expected = np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8)
    np.testing.assert_array_equal(loaded.image_bytes(fill), expected)
    np.testing.assert_array_equal(loaded.image_bytes(2), expected)  # by channel
    np.testing.assert_array_equal(loaded.image_bytes(1), np.frombuffer(
        make_binary().images[0].data, dtype=np.uint8))


def test_sections_are_aligned_and_fills_store_nothing(written):
    header = read_header(written)
    stored = [s for s in header["sections"] if s["offset"] is not None]
    assert all(s["offset"] % ALIGNMENT == 0 for s in stored)
    assert [s["kind"] for s in header["sections"]] == ["program"] * 4 + ["tokenizer"] + \
        ["image"] * 2
    assert header["sections"][-1] == {"name": "hbm channel 2", "kind": "image", "size": 5000,
                                      "channel": 2, "fill": {"kind": "random", "seed": 7},
                                      "offset": None, "sha256": None}
    last = stored[-1]
    assert written.stat().st_size == last["offset"] + last["size"]


def test_program_lookup(written):
    loaded = read_binary(written)
    assert loaded.program(0, "prefill", 16) is loaded.programs[2]
    assert loaded.program(1, "decode") is loaded.programs[3]
    with pytest.raises(BinaryError) as error:
        loaded.program(1, "prefill", 64)
    assert str(error.value) == (
        f"{written}: no prefill program (bucket 64) for core 1 (programs: core0 decode, core0 "
        "prefill bucket 64, core0 prefill bucket 16, core1 decode)")


def test_progress_counts_up_to_the_file_size(tmp_path):
    calls = []
    write_binary(tmp_path / "m.fgb", make_binary(), progress=lambda *c: calls.append(c))
    size = (tmp_path / "m.fgb").stat().st_size
    assert all(total == size for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == size


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.programs.append(Program(0, "decode", 0, b"")),
     "two programs for core 0, decode, bucket 0"),
    (lambda b: b.images.append(Image(1, None, 8, {"kind": "random", "seed": 1})),
     "two images for HBM channel 1"),
    (lambda b: b.metadata.update(when=object()), "binary.metadata is not JSON-serialisable"),
    (lambda b: b.layout.update(bad=float("nan")), "binary.layout is not JSON-serialisable"),
    (lambda b: b.programs.append("halt"), "binary.programs holds a str, not a Program"),
])
def test_writer_rejects_invalid_binaries(tmp_path, change, message):
    broken = make_binary()
    change(broken)
    with pytest.raises(ValueError, match=message):
        write_binary(tmp_path / "m.fgb", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Program(0, "decode", 0, bytes(33)),
     "words must be whole 32-byte instructions, not 33 bytes"),
    (lambda: Program(0, "train", 0, b""), "phase must be 'prefill' or 'decode', not 'train'"),
    (lambda: Program(-1, "decode", 0, b""), "core must be a non-negative integer, not -1"),
    (lambda: Image(0, b"abc", 4), "image of channel 0 has 3 bytes of data but size 4"),
    (lambda: Image(0, None, 4), "an image has either data or a fill, not neither"),
    (lambda: Image(0, b"abc", 3, {"kind": "random", "seed": 1}),
     "an image has either data or a fill, not both"),
    (lambda: Image(0, None, 3, {"kind": "zeros"}),
     "unknown fill kind 'zeros' \\(this flightgen knows 'random'\\)"),
])
def test_members_are_validated(make, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        make()


# --- damage --------------------------------------------------------------------------------------

def expected_damage(header, header_end, position):
    """What the reader must say about a bit flipped at ``position`` (a regular expression)."""
    if position < 8:
        return "not a flightgen binary \\(bad magic\\)"
    if position < 12:
        return "format version \\d+ is not supported \\(this flightgen reads version 1\\)"
    if position < 16:  # the header length: past the end, or the checksum covers other bytes
        return "truncated: the header ends|header checksum mismatch"
    if position < 20:
        return "header checksum mismatch"
    if position < 24:
        return "corrupt preamble: the reserved field is 0x[0-9a-f]+, not 0"
    if position < header_end:
        return "header checksum mismatch"
    for section in header["sections"]:
        if section["offset"] is None:
            continue
        name = section["name"]
        if position < section["offset"]:
            return f"corrupt padding before section '{name}'"
        if position < section["offset"] + section["size"]:
            return f"checksum mismatch in section '{name}'"
    raise AssertionError(f"position {position} is past the last section")


def test_every_flipped_bit_is_reported(written, tmp_path):
    """Flip one bit (rotating which) in every byte of the preamble and the header, in the first
    and last byte of every section and every gap, and in every 13th byte elsewhere: nothing
    loads silently, and the message names the region."""
    good = written.read_bytes()
    header = read_header(written)
    header_end = 24 + struct.unpack_from("<I", good, 12)[0]
    positions = set(range(header_end)) | set(range(header_end, len(good), 13))
    for section in header["sections"]:
        if section["offset"] is not None:
            end = section["offset"] + section["size"]
            positions |= {section["offset"] - 1, section["offset"], end - 1, end}
    damaged = tmp_path / "damaged.fgb"
    for position in sorted(positions - {len(good)}):
        data = bytearray(good)
        data[position] ^= 1 << (position * 3 % 8)
        damaged.write_bytes(data)
        with pytest.raises(BinaryError) as error:
            read_binary(damaged)
        message = str(error.value)
        assert message.startswith(f"{damaged}: ") and "\n" not in message
        assert re.search(expected_damage(header, header_end, position), message), \
            (position, message)


@pytest.mark.parametrize("where", ["empty", "magic", "preamble", "header", "padding",
                                   "first section", "last section", "last byte"])
def test_truncation_is_reported(written, tmp_path, where):
    good = written.read_bytes()
    header = read_header(written)
    header_end = 24 + struct.unpack_from("<I", good, 12)[0]
    stored = [s for s in header["sections"] if s["offset"] is not None]
    cut = {"empty": 0, "magic": 5, "preamble": 20, "header": header_end - 10,
           "padding": header_end + 10, "first section": stored[0]["offset"] + 3,
           "last section": stored[-1]["offset"] + 100, "last byte": len(good) - 1}[where]
    short = tmp_path / "short.fgb"
    short.write_bytes(good[:cut])
    with pytest.raises(BinaryError, match="truncated|shorter|empty file") as error:
        read_binary(short)
    if where in ("padding", "first section"):
        assert str(error.value) == (
            f"{short}: truncated: section 'program core0 decode' ends at byte "
            f"{stored[0]['offset'] + 64} but the file has {cut} bytes")
    if where == "preamble":
        assert str(error.value) == (f"{short}: truncated: the file has 20 bytes, shorter than "
                                    "the 24-byte preamble")


def test_trailing_bytes_are_reported(written):
    written.write_bytes(written.read_bytes() + b"\0")
    with pytest.raises(BinaryError, match="1 unexpected bytes after byte"):
        read_binary(written)


@pytest.mark.parametrize("version", [0, 2, 7])
def test_other_versions_are_refused(written, version):
    data = bytearray(written.read_bytes())
    struct.pack_into("<I", data, 8, version)
    written.write_bytes(data)
    with pytest.raises(BinaryError) as error:
        read_binary(written)
    assert str(error.value) == (f"{written}: format version {version} is not supported (this "
                                "flightgen reads version 1)")


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00" + bytes(40), b"hello\n",
                                     b"FLIGHTGX" + bytes(100)])
def test_other_files_are_refused(tmp_path, content):
    path = tmp_path / "model.fgb"
    path.write_bytes(content)
    with pytest.raises(BinaryError) as error:
        read_binary(path)
    assert str(error.value) == f"{path}: not a flightgen binary (bad magic)"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BinaryError, match=f"^{tmp_path}/nothing.fgb: no such file$"):
        read_binary(tmp_path / "nothing.fgb")
    with pytest.raises(BinaryError, match="is a folder, not a flightgen binary$"):
        read_binary(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda h: h["sections"][1].update(size=40),
     "program section 'program core0 prefill bucket 64' has 40 bytes, not a multiple of 32"),
    (lambda h: h.pop("layout"), "corrupt header: no 'layout'"),
    (lambda h: h.update(model=[1]), "corrupt header: 'model' is not an object"),
    (lambda h: h["sections"][6].update(fill={"kind": "zeros"}),
     "section 'hbm channel 2': unknown fill kind 'zeros'"),
    (lambda h: h["sections"][3].update(core=0),
     "corrupt header: section 'program core1 decode' appears twice"),
    (lambda h: h["sections"][1].update(offset=4100),
     "starts at byte 4100, not a multiple of 4096"),
    (lambda h: h["sections"][1].update(offset=4096),
     "section 'program core0 prefill bucket 64' starts at byte 4096, before the end"),
    (lambda h: h.update(tokenizer_section=None), "tokenizer_section None does not match"),
])
def test_malformed_headers_are_reported(written, change, message):
    rewrite_header(written, change)
    with pytest.raises(BinaryError, match=message):
        read_binary(written)


def test_header_that_is_not_json(written):
    data = bytearray(written.read_bytes())
    length = struct.unpack_from("<I", data, 12)[0]
    data[24] = ord("!")
    struct.pack_into("<I", data, 16, zlib.crc32(data[24:24 + length]))
    written.write_bytes(data)
    with pytest.raises(BinaryError, match=r"corrupt header: not valid JSON \(Expecting value"):
        read_binary(written)


def test_verify_false_skips_the_checksums(written):
    header = read_header(written)
    position = header["sections"][0]["offset"] + 40
    data = bytearray(written.read_bytes())
    data[position] ^= 0x10
    written.write_bytes(data)
    with pytest.raises(BinaryError, match="checksum mismatch in section 'program core0 decode'"):
        read_binary(written)
    assert read_binary(written, verify=False).programs[0].words[40] == data[position]


# --- target --------------------------------------------------------------------------------------

def test_target_must_match(written):
    assert read_binary(written, target=target()) == make_binary()
    renamed = target()
    renamed["name"] = "another name, same hardware"
    renamed["clock_mhz"] = 300.0  # the same hardware closed at another clock
    read_binary(written, target=renamed)
    with pytest.raises(BinaryError) as error:
        read_binary(written, target=target(line_bits=512))
    assert str(error.value) == (f"{written}: built for a different hardware configuration: "
                                "core.line_bits is 256 in the binary, 512 here")


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update(cores=4), "cores is 2 in the binary, 4 here"),
    (lambda t: t["hbm"]["channels"].append(4), "hbm.channels has 4 entries in the binary, 5 here"),
    (lambda t: t["hbm"]["channels"].__setitem__(2, 9), "hbm.channels\\[2\\] is 2 in the binary, "
                                                       "9 here"),
    (lambda t: t.pop("hbm"), "hbm is {.*} in the binary and not set here"),
    (lambda t: t.update(board="u280"), "board is not set in the binary and 'u280' here"),
    (lambda t: t["core"].update(chain=16), "core.chain is 8 in the binary, 16 here"),
])
def test_check_target_names_the_first_difference(change, message):
    here = target()
    change(here)
    with pytest.raises(BinaryError, match=f"^m.fgb: built for a different hardware "
                                          f"configuration: {message}$"):
        check_target(target(), here, "m.fgb")
    check_target(target(), {**target(), "hbm": {"channels": (0, 1, 2, 3),
                                                "channel_bytes": 1 << 28}}, "m.fgb")


def test_core_fields_a_binary_predates_take_their_defaults():
    """A binary written before a core field existed records no value for it: the default
    (an engine with every sparse mode and MM) is what it was compiled for."""
    old = target()
    for name in ("keeps", "modes"):
        del old["core"][name]
    check_target(old, target(), "m.fgb")
    with pytest.raises(BinaryError, match=r"^m.fgb: built for a different hardware "
                                          r"configuration: core.keeps has 4 entries in the "
                                          r"binary, 2 here$"):
        check_target(old, target(keeps=(16, 8)), "m.fgb")


# --- atomic writes -------------------------------------------------------------------------------

def interrupt_midway(done, total):
    if done > 5000:
        raise KeyboardInterrupt


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_binary(tmp_path / "model.fgb", make_binary(), progress=interrupt_midway)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_previous_file(written):
    before = written.read_bytes()
    changed = make_binary()
    changed.metadata["version"] = 2
    with pytest.raises(KeyboardInterrupt):
        write_binary(written, changed, progress=interrupt_midway)
    assert written.read_bytes() == before
    assert [p.name for p in written.parent.iterdir()] == ["model.fgb"]


def test_failed_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fgb.os, "fsync", full)
    with pytest.raises(BinaryError) as error:
        write_binary(tmp_path / "model.fgb", make_binary())
    assert str(error.value) == f"{tmp_path}/model.fgb: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_folder(tmp_path):
    with pytest.raises(BinaryError, match="cannot write: no such folder"):
        write_binary(tmp_path / "no" / "model.fgb", make_binary())


# --- flightgen inspect and disasm ----------------------------------------------------------------

def test_inspect_prints_the_summary(written, capsys):
    assert cli.main(["inspect", str(written)]) == 0
    out = capsys.readouterr().out
    size = written.stat().st_size
    assert f"flightgen binary, version 1, {size:,} bytes, checksums verified" in out
    assert "test-2core, 2 cores" in out
    assert "line_bits=256" in out and "dim=64 n_layers=2 n_heads=4 n_kv_heads=2" in out
    assert "mode=decode+prefill quantization.weights=int8" in out
    lines = out.splitlines()
    table = lines[lines.index("programs") + 1:lines.index("programs") + 7]
    assert table[0].split() == ["core", "phase", "bucket", "instructions", "bytes"]
    assert table[1].split() == ["0", "decode", "dynamic", "2", "64"]
    assert table[2].split() == ["0", "prefill", "64", "22", "704"]
    assert table[5].split() == ["total", "73", "2,336"]
    assert "        2           5,000  random fill, seed 7" in out
    assert all(len(line) <= 100 for line in lines)


def test_inspect_json_prints_the_header(written, capsys):
    assert cli.main(["inspect", "--json", str(written)]) == 0
    assert json.loads(capsys.readouterr().out) == read_header(written)


def test_disasm_prints_one_program(written, capsys):
    assert cli.main(["disasm", str(written)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"# {written}: core 0, decode (dynamic), 2 instructions",
        "    0: load buffer=vec length=1",
        "    1: halt"]
    assert cli.main(["disasm", str(written), "--phase", "prefill", "--range", "5:"]) == 0
    program = make_binary().programs[2]  # the smallest bucket
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"# {written}: core 0, prefill (bucket 16), 7 instructions",
                     "    5: sync wait=load,store", "    6: halt"]
    assert cli.main(["disasm", str(written), "--phase", "prefill", "--bucket", "16",
                     "--range", "4:6"]) == 0
    expected = [disassemble_word(int.from_bytes(program.words[32 * pc:32 * pc + 32], "little"))
                for pc in (4, 5)]
    assert capsys.readouterr().out.splitlines()[1:] == [f"    4: {expected[0]}",
                                                         f"    5: {expected[1]}"]


def test_disasm_of_a_long_program(written, capsys):
    assert cli.main(["disasm", str(written), "--core", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 42
    assert lines[-2:] == ["   40: sync wait=load,store", "   41: halt"]


@pytest.mark.parametrize(("args", "message"), [
    (["disasm", "{path}", "--core", "3"],
     "{path}: no decode program for core 3 (programs: core0 decode, core0 prefill bucket 64, "
     "core0 prefill bucket 16, core1 decode)"),
    (["disasm", "{path}", "--bucket", "32"], "{path}: no decode program (bucket 32) for core 0"),
    (["disasm", "{path}", "--range", "x:y"],
     "--range takes A:B (first and one past the last pc), not 'x:y'"),
    (["disasm", "{path}", "--range", "9:"],
     "--range 9: starts past the end of the program (2 instructions)"),
    (["inspect", "{path}.missing"], "{path}.missing: no such file"),
])
def test_cli_errors_are_one_line(written, capsys, args, message):
    assert cli.main([a.format(path=written) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"flightgen: error: {message.format(path=written)}")


@pytest.mark.parametrize("verb", ["inspect", "disasm"])
def test_cli_reports_a_corrupt_file(written, capsys, verb):
    data = bytearray(written.read_bytes())
    data[-1] ^= 0x80
    written.write_bytes(data)
    assert cli.main([verb, str(written)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"flightgen: error: {written}: checksum mismatch in section "
                            "'hbm channel 1'\n")
