"""Backtest inputs: plain, gzip or zstd files (or stdin) read as buffers that end on line boundaries.

The compression is recognised by its magic bytes (``1f 8b`` gzip, ``28 b5 2f fd`` zstd), not by the
file name, so ``-`` (stdin) may be compressed too. Concatenated gzip members and zstd frames are read
in turn.

Errors
    A missing, unreadable or directory path raises the ``OSError`` that ``os.stat`` or ``open`` raised
    (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``), untouched: these are not
    decoding problems, no ``EngineError`` subclass describes I/O on local files, and the CLI reports
    ``strerror`` and ``filename`` as they are. A missing file fails when the :class:`FileSource` is
    created; other open errors when it is first iterated.

    A compressed stream that ends before its end marker raises
    ``DecodeError("truncated_input", ...)``; bytes that are not a valid stream raise
    ``DecodeError("bad_compressed_input", ...)``. Both are raised only after every decompressed byte
    has been yielded, the cut last line included, so that the event decoder counts that line as
    malformed and the events before it are kept: nothing is cut silently.

Output bounds: gzip output is produced in pieces of at most 1 MiB; zstd gets 64 KiB of input at a
time (the zstandard API has no output bound, so a hostile zstd file can still expand a lot).
"""

from __future__ import annotations

import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import zstandard

from engine.errors import DecodeError

GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
DEFAULT_CHUNK_BYTES: Final = 8 << 20
_GZIP_READ_BYTES: Final = 1 << 20
_GZIP_OUT_BYTES: Final = 1 << 20
_ZSTD_READ_BYTES: Final = 1 << 16


class FileSource:
    """One input (a path or ``-`` for stdin) as an iterable of byte buffers ending on line boundaries.

    Parameters
    ----------
    path
        A file path, or ``-`` for standard input.
    chunk_bytes
        Size of the yielded buffers in decompressed bytes (default 8 MiB): a buffer ends at the last
        newline of the read that brings it to ``chunk_bytes`` or more (reads that bring twice as
        much are cut at the first newline past each ``chunk_bytes``), so buffers hold from
        ``chunk_bytes`` less one line to twice ``chunk_bytes`` plus one line, and a line longer than
        ``chunk_bytes`` comes out whole. Only the last buffer may be shorter or lack a final newline.
    stdin
        The binary stream ``-`` reads (default ``sys.stdin.buffer``); it is not closed.

    Attributes
    ----------
    size_bytes
        Size of the input on disk in bytes (compressed, when it is), or None for stdin and pipes.
    read_bytes
        Input bytes (compressed, when it is) consumed so far; with ``size_bytes`` it drives a
        progress bar.
    compression
        ``"none"``, ``"gzip"`` or ``"zstd"`` once the first bytes are read, None before.
    """

    def __init__(
        self, path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *, stdin: BinaryIO | None = None
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"expected chunk_bytes >= 1, got {chunk_bytes}")
        self.path = str(path)
        self.chunk_bytes = chunk_bytes
        self.read_bytes = 0
        self.compression: str | None = None
        self.size_bytes: int | None = None
        self._stdin = stdin
        if self.path != "-":
            st = os.stat(self.path)
            if stat.S_ISREG(st.st_mode):
                self.size_bytes = st.st_size

    def __iter__(self) -> Iterator[bytes]:
        self.read_bytes = 0
        if self.path == "-":
            yield from self._lines(self._stdin if self._stdin is not None else sys.stdin.buffer)
            return
        with open(self.path, "rb") as stream:
            yield from self._lines(stream)

    def _lines(self, stream: BinaryIO) -> Iterator[bytes]:
        """Decompressed pieces regrouped into buffers that end after a newline."""
        limit = self.chunk_bytes
        parts: list[bytes | memoryview] = []
        size = 0
        try:
            for piece in self._decompressed(stream):
                parts.append(piece)
                size += len(piece)
                end = piece.rfind(b"\n") + 1 if size >= limit else 0
                if end == 0:
                    continue
                rest = piece[end:]
                parts[-1] = memoryview(piece)[:end]  # one copy, in the join
                buf = b"".join(parts)
                start = 0
                while len(buf) - start >= 2 * limit:  # a large piece: cut past each chunk_bytes
                    cut = buf.find(b"\n", start + limit - 1) + 1
                    yield buf[start:cut]
                    start = cut
                if start < len(buf):
                    yield buf[start:] if start else buf
                parts = [rest] if rest else []
                size = len(rest)
        except DecodeError:
            if parts:  # what was decompressed goes out first, the cut line with it
                yield b"".join(parts)
            raise
        if parts:
            yield b"".join(parts)

    def _decompressed(self, stream: BinaryIO) -> Iterator[bytes]:
        head = self._read(stream, max(len(ZSTD_MAGIC), min(self.chunk_bytes, _GZIP_READ_BYTES)))
        while len(head) < len(ZSTD_MAGIC):  # a pipe may deliver fewer bytes than asked
            more = self._read(stream, len(ZSTD_MAGIC) - len(head))
            if not more:
                break
            head += more
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
            yield from self._inflate(self._raw(stream, head, _GZIP_READ_BYTES),
                                     lambda: zlib.decompressobj(wbits=31), "gzip", _GZIP_OUT_BYTES)
        elif head.startswith(ZSTD_MAGIC):
            self.compression = "zstd"
            dctx = zstandard.ZstdDecompressor()
            yield from self._inflate(self._raw(stream, head, _ZSTD_READ_BYTES), dctx.decompressobj, "zstd", 0)
        else:
            self.compression = "none"
            yield from self._raw(stream, head, self.chunk_bytes)

    def _read(self, stream: BinaryIO, n: int) -> bytes:
        data = stream.read(n)
        self.read_bytes += len(data)
        return data

    def _raw(self, stream: BinaryIO, head: bytes, piece_bytes: int) -> Iterator[bytes]:
        if head:
            yield head
        while data := self._read(stream, piece_bytes):
            yield data

    def _inflate(
        self, pieces: Iterator[bytes], make: Callable[[], Any], kind: str, max_out: int
    ) -> Iterator[bytes]:
        """Decompress member after member (frame after frame); raise on a cut or corrupt stream."""
        dec = make()
        fed = False  # whether the current member has been given bytes
        try:
            for piece in pieces:
                data, fed = piece, True
                while True:
                    out = dec.decompress(data, max_out) if max_out else dec.decompress(data)
                    if out:
                        yield out
                    if dec.eof:  # the next member starts in the unused bytes, if any
                        data, dec = dec.unused_data, make()
                        fed = bool(data)
                        if not data:
                            break
                        continue
                    data = dec.unconsumed_tail if max_out else b""
                    if not data and not (max_out and len(out) == max_out):
                        break  # else the output was capped: zlib may still hold some
        except (zlib.error, zstandard.ZstdError) as e:
            raise DecodeError(
                "bad_compressed_input",
                f"{self.path}: expected a valid {kind} stream, got an error after {self.read_bytes:,} "
                f"input bytes: {e}",
            ) from None
        if fed:
            raise DecodeError(
                "truncated_input",
                f"{self.path}: expected the end of the {kind} stream, got the end of the input after "
                f"{self.read_bytes:,} bytes (the file is truncated)",
            )


def iter_chunks(path_or_dash: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Buffers of ``path_or_dash`` (``-`` for stdin) that never split a line; see :class:`FileSource`."""
    return iter(FileSource(path_or_dash, chunk_bytes))
