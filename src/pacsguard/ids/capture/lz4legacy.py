"""LZ4's legacy frame format (``lz4 -l``), decompressed as a stream.

The format (the LZ4 Frame Format Description, appendix "Legacy frame"): the magic number
0x184C2102 (little-endian), then blocks, each a 4-byte little-endian compressed size followed by
that many bytes of one LZ4 block (the LZ4 Block Format) that decompresses to 8 MiB, the last
block to fewer.  There is no end mark and no checksum: the frame ends with the file, or where a
block size reads as a magic number instead (another frame follows: files joined with ``cat``).
The ``lz4`` tool takes any "size" above the largest an 8 MiB block compresses to
(``LZ4_COMPRESSBOUND``) as the next frame's magic; only another legacy frame is read here, any
other is named as damage.

What a cut file looks like: the bytes end inside a block's size or inside its data (named as
gzip's reader names it, :class:`EOFError`); a file cut exactly between two blocks cannot be told
from a whole one (``lz4 -d`` reads it whole too).  The blocks need the ``lz4`` package's
``lz4.block``; memory holds one block (8 MiB) at a time whatever the file's length.
"""

from __future__ import annotations

import io
import struct
from typing import Any

__all__ = ["LEGACY_MAGIC", "LegacyLZ4Reader"]

LEGACY_MAGIC = 0x184C2102
_BLOCK = 8 << 20  # every block but the last decompresses to this
_MAX_COMPRESSED = _BLOCK + _BLOCK // 255 + 16  # LZ4_COMPRESSBOUND(8 MiB): 8,421,520
_U32 = struct.Struct("<I")


class LegacyLZ4Reader(io.BufferedIOBase):
    """The decompressed bytes of ``raw`` (legacy LZ4 frames, from their magic number on).

    ``block`` is the ``lz4.block`` module; its ``LZ4BlockError`` is raised for a block that does not
    decompress and for a block size no 8 MiB block can have, :class:`EOFError` for a file cut
    inside a block."""

    def __init__(self, raw: io.BufferedIOBase, block: Any) -> None:
        super().__init__()
        self._raw = raw
        self._block = block
        self._out = b""  # the current block's decompressed bytes
        self._pos = 0  # how many of them were handed out
        self._blocks = 0  # blocks decompressed, for messages

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (``-1``: the rest of the current block); ``b""`` at the end."""
        while self._pos >= len(self._out):
            if not self._next_block():
                return b""
        end = len(self._out) if size < 0 else min(len(self._out), self._pos + size)
        data = self._out[self._pos : end]
        self._pos = end
        return data

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        want = -1 if size is None or size < 0 else size
        while want != 0:
            data = self.read1(want)
            if not data:
                break
            parts.append(data)
            if want > 0:
                want -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _next_block(self) -> bool:
        """Decompress the next block into ``_out``; False at the end of the file."""
        head = self._raw.read(4)
        if not head:
            return False
        if len(head) < 4:
            raise EOFError(f"Compressed file ended inside the size of LZ4 legacy block {self._blocks + 1} "
                           f"({len(head)} of 4 bytes)")
        size = _U32.unpack(head)[0]
        if size == LEGACY_MAGIC:  # a frame's start: the first, or the next of files joined
            self._out, self._pos = b"", 0
            return True
        if size > _MAX_COMPRESSED:
            raise self._block.LZ4BlockError(f"LZ4 legacy block {self._blocks + 1} claims {size:,} compressed bytes, "
                                            f"more than an 8 MiB block can take ({_MAX_COMPRESSED:,}): not legacy "
                                            "LZ4 data (or a kind of frame other than legacy after it)")
        data = self._raw.read(size)
        if len(data) < size:
            raise EOFError(f"Compressed file ended inside LZ4 legacy block {self._blocks + 1} ({len(data):,} of "
                           f"{size:,} bytes)")
        try:
            self._out = self._block.decompress(data, uncompressed_size=_BLOCK)
        except self._block.LZ4BlockError as e:
            raise self._block.LZ4BlockError(f"LZ4 legacy block {self._blocks + 1}: {e}") from None
        self._pos = 0
        self._blocks += 1
        return True
