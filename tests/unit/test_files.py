"""FileSource / iter_chunks: plain, gzip, zstd and stdin inputs cut on line boundaries."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.batch import KeyTable
from engine.config import EventsConfig
from engine.errors import DecodeError
from engine.events import EventDecoder
from engine.io.files import FileSource, iter_chunks


def make_lines(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(
        b'{"ts": %d, "service": "s%d", "route": "/%s"}\n'
        % (1_700_000_000 + i, i % 3, b"x" * rng.randint(0, 90))
        for i in range(n)
    )


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(tmp_path: Path, kind: str, data: bytes) -> Path:
    path = tmp_path / {"gzip": "in.ndjson.gz", "zstd": "in.ndjson.zst", "none": "in.ndjson"}[kind]
    path.write_bytes(compress(kind, data))
    return path


def check_chunks(chunks: list[bytes], original: bytes) -> None:
    assert b"".join(chunks) == original
    for chunk in chunks[:-1]:
        assert chunk.endswith(b"\n")
    assert all(chunks)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("chunk_bytes", [1, 97, 4096, 8 << 20])
def test_chunks_end_on_line_boundaries(tmp_path: Path, kind: str, chunk_bytes: int) -> None:
    data = make_lines(3000, seed=chunk_bytes)
    path = write(tmp_path, kind, data)
    src = FileSource(path, chunk_bytes)
    chunks = list(src)
    check_chunks(chunks, data)
    assert src.compression == kind
    assert src.size_bytes == path.stat().st_size == src.read_bytes
    if chunk_bytes >= len(data):
        assert len(chunks) == 1
    else:  # from chunk_bytes less one line to twice chunk_bytes plus one line
        longest = max(len(line) + 1 for line in data.split(b"\n"))
        assert all(chunk_bytes - longest < len(c) < 2 * chunk_bytes + longest for c in chunks[:-1])


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_stdin(kind: str) -> None:
    data = make_lines(500, seed=3)
    src = FileSource("-", 1000, stdin=io.BytesIO(compress(kind, data)))
    chunks = list(src)
    check_chunks(chunks, data)
    assert src.size_bytes is None
    assert src.read_bytes == len(compress(kind, data))


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_concatenated_members_and_frames(tmp_path: Path, kind: str) -> None:
    a, b = make_lines(200, seed=1), make_lines(300, seed=2)
    path = tmp_path / "multi"
    path.write_bytes(compress(kind, a) + compress(kind, b))
    check_chunks(list(FileSource(path, 512)), a + b)


def test_large_gzip_output_is_produced_in_capped_pieces(tmp_path: Path) -> None:
    data = b'{"ts": 1700000000, "service": "same"}\n' * 200_000  # 7.6 MB that compresses ~500x
    path = write(tmp_path, "gzip", data)
    check_chunks(list(FileSource(path, 3 << 20)), data)


def test_last_line_without_newline_and_long_lines(tmp_path: Path) -> None:
    data = b"short\n" + b"y" * 10_000 + b"\nz" * 3 + b"\nno newline at the end"
    path = write(tmp_path, "none", data)
    chunks = list(iter_chunks(path, 100))
    check_chunks(chunks, data)
    assert chunks[0] == b"short\n"  # the first 100-byte read ends inside the long line
    assert chunks[1].startswith(b"y" * 10_000 + b"\n")  # which comes out whole
    assert chunks[-1].endswith(b"no newline at the end")


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "none", b"")
    src = FileSource(path)
    assert list(src) == []
    assert src.size_bytes == 0 and src.read_bytes == 0


def test_progress_grows_to_the_size(tmp_path: Path) -> None:
    path = write(tmp_path, "zstd", make_lines(20_000, seed=5))
    src = FileSource(path, 64 << 10)
    seen = []
    for _ in src:
        seen.append(src.read_bytes)
    assert len(seen) > 3
    assert seen == sorted(seen) and seen[-1] == src.size_bytes


def test_stopping_early_closes_quietly(tmp_path: Path) -> None:
    path = write(tmp_path, "gzip", make_lines(5000, seed=6))
    chunks = iter(FileSource(path, 1000))
    first = next(chunks)
    assert first.endswith(b"\n")
    chunks.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_stream_is_reported_after_its_lines(tmp_path: Path, kind: str, keep: float) -> None:
    data = make_lines(20_000, seed=7)  # zstd gives output per 128 KiB block: take several
    blob = compress(kind, data)
    path = tmp_path / "cut"
    path.write_bytes(blob[: int(len(blob) * keep)])
    chunks: list[bytes] = []
    with pytest.raises(DecodeError, match=rf"truncated_input: .*cut: expected the end of the {kind} stream, "
                                          r"got the end of the input after [\d,]+ bytes \(the file is "
                                          r"truncated\)"):
        chunks.extend(FileSource(path, 20_000))
    got = b"".join(chunks)
    assert got and data.startswith(got) and len(got) < len(data)
    # Decoded, the cut last line is counted and every complete line survives.
    dec = EventDecoder(EventsConfig(), KeyTable())
    decoded = [dec.decode(c, "ndjson") for c in chunks]
    n_events = sum(len(b) for b, _ in decoded)
    n_bad = sum(sum(r.values()) for _, r in decoded)
    complete = got.count(b"\n")
    assert n_events == complete
    assert n_bad == (0 if got.endswith(b"\n") else 1)


def test_truncated_gzip_header(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"a\n")[:5])
    with pytest.raises(DecodeError, match="truncated_input"):
        list(FileSource(path))


def test_garbage_after_a_gzip_member(tmp_path: Path) -> None:
    data = make_lines(100, seed=8)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(data) + b"not gzip at all")
    chunks: list[bytes] = []
    with pytest.raises(DecodeError, match=r"bad_compressed_input: .*x\.gz: expected a valid gzip stream, "
                                          r"got an error after [\d,]+ input bytes"):
        chunks.extend(FileSource(path, 1 << 20))
    assert b"".join(chunks) == data


def test_corrupt_zstd(tmp_path: Path) -> None:
    path = tmp_path / "x.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    with pytest.raises(DecodeError, match=r"bad_compressed_input: .*expected a valid zstd stream"):
        list(FileSource(path))


def test_missing_and_unreadable_paths_raise_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        FileSource(tmp_path / "nope.ndjson")
    assert err.value.filename == str(tmp_path / "nope.ndjson")
    with pytest.raises(IsADirectoryError):
        list(FileSource(tmp_path))
    with pytest.raises(ValueError, match="expected chunk_bytes >= 1, got 0"):
        FileSource("-", 0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60),
       st.integers(1, 300), st.sampled_from(["none", "gzip", "zstd"]), st.booleans())
def test_any_lines_any_chunk_size(
    lines: list[bytes], chunk_bytes: int, kind: str, final_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    # Plain input that starts with a compression magic number is read as compressed (stdin has no
    # file name to go by); that case is tested on its own.
    assume(kind != "none" or not data.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")))
    chunks = list(FileSource("-", chunk_bytes, stdin=io.BytesIO(compress(kind, data))))
    check_chunks(chunks, data)


def test_plain_stdin_that_looks_compressed_is_reported() -> None:
    # Two bytes of gzip magic and nothing else: read as gzip, reported as truncated, not guessed at.
    with pytest.raises(DecodeError, match="truncated_input"):
        list(FileSource("-", 1, stdin=io.BytesIO(b"\x1f\x8b")))
