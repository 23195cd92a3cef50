"""Where a Zstandard stream's frames end, told from its compressed bytes alone (RFC 8878 3.1).

The ``zstandard`` package's stream reader returns no more data when its input ends, whether the
input ended between two frames (a whole file) or inside one (a file cut short, copied while it
was being written): it cannot tell a capture cut short from a whole one.  :class:`FrameWalker`
follows the frame layout over the same compressed bytes, without decompressing anything, so that
the reader can name the cut as the ``zstd`` tool does ("premature end"):

* a Zstandard frame (RFC 8878 3.1.1): magic 0xFD2FB528, the Frame Header (a descriptor byte that
  gives the sizes of the Window Descriptor, Dictionary ID and Frame Content Size fields that
  follow it, 3.1.1.1), blocks each with a 3-byte header (Last_Block bit, Block_Type, Block_Size;
  3.1.1.2: an RLE block holds one byte, a Raw or Compressed block Block_Size bytes), and a 4-byte
  Content Checksum when the descriptor announces one;
* a skippable frame (3.1.2): magic 0x184D2A50-0x184D2A5F, a 4-byte size, that many bytes.

Bytes it does not recognise (a bad magic, the reserved block type) end the walk: the decoder
reports that damage itself.
"""

from __future__ import annotations

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE = 0xFFFFFFF0, 0x184D2A50
_DICTIONARY_ID_SIZES = (0, 1, 2, 4)  # by Dictionary_ID_Flag (RFC 8878 3.1.1.1.1)
_CONTENT_SIZE_SIZES = (0, 2, 4, 8)  # by Frame_Content_Size_Flag; 0 means 1 byte in a single segment
_RESERVED_BLOCK = 3  # Block_Type 3 (RFC 8878 3.1.1.2.2): corrupted data
_RLE_BLOCK = 1


class FrameWalker:
    """Fed every compressed byte in order (:meth:`feed`); :attr:`inside` says whether the bytes so
    far end inside a frame rather than between two."""

    __slots__ = ("_field", "_want", "_skip", "_state", "_checksum", "lost")

    def __init__(self) -> None:
        self._field = bytearray()  # the header field being collected
        self._want = 4  # its size
        self._skip = 0  # bytes to pass over before the next field
        self._state = "magic"  # which field is being collected
        self._checksum = False  # the current frame ends with a Content Checksum
        self.lost = False  # bytes not recognised: the walk gave up (the decoder says why)

    @property
    def inside(self) -> bool:
        """The bytes fed so far stop inside a frame (or a skippable frame)."""
        return not self.lost and (self._state != "magic" or self._skip > 0 or bool(self._field))

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and not self.lost:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._want - len(self._field), end - pos)
            self._field += view[pos:pos + take]
            pos += take
            if len(self._field) == self._want:
                value = int.from_bytes(self._field, "little")
                self._field.clear()
                self._parsed(value)

    def _parsed(self, value: int) -> None:
        """One whole field of the current state: what comes next."""
        if self._state == "magic":
            self._magic(value)
        elif self._state == "skippable size":
            self._skip, self._state, self._want = value, "magic", 4
        elif self._state == "descriptor":
            self._descriptor(value)
        else:  # a block header
            self._block(value)

    def _magic(self, value: int) -> None:
        if value == _ZSTD_MAGIC:
            self._state, self._want = "descriptor", 1
        elif value & _SKIPPABLE_MASK == _SKIPPABLE:
            self._state, self._want = "skippable size", 4
        else:
            self.lost = True

    def _descriptor(self, value: int) -> None:
        """The Frame_Header_Descriptor (RFC 8878 3.1.1.1.1): the size of the rest of the header."""
        single_segment = bool(value >> 5 & 1)
        if value >> 3 & 1:  # the reserved bit must be 0
            self.lost = True
            return
        self._checksum = bool(value >> 2 & 1)
        content_size = _CONTENT_SIZE_SIZES[value >> 6] or (1 if single_segment else 0)
        self._skip = (0 if single_segment else 1) + _DICTIONARY_ID_SIZES[value & 3] + content_size
        self._state, self._want = "block", 3

    def _block(self, value: int) -> None:
        """A Block_Header (RFC 8878 3.1.1.2): skip the block's content; after the last block, the
        checksum, then the next frame's magic."""
        last, block_type, size = value & 1, value >> 1 & 3, value >> 3
        if block_type == _RESERVED_BLOCK:
            self.lost = True
            return
        self._skip = 1 if block_type == _RLE_BLOCK else size
        if last:
            self._skip += 4 if self._checksum else 0
            self._state, self._want = "magic", 4
