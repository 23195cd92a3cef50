"""Round 11, helper S (outside fuzzing of the scanner's PDF reader, ISO 32000-1 7.3.8.1): the
``stream`` keywords of a document (pacsguard.scan.pdf._streams). Each ">>" was tried as the end
of a stream's dictionary, the white space and comments after it read up to ``stream``; a ">>"
inside a comment is tried too, so lines of ``%>>`` read the rest of the document once each (a
32 KB file took seconds, 64 KB some ten, a megabyte hours), and ``%>>`` repeated on one long
line read the rest of the line once each (500 on a line of 1 MB: five seconds). The keywords are
now found in one pass, the same ones at the same places."""

from __future__ import annotations

import time

import pytest
from pdf_samples import hostile

from pacsguard.scan import pdf


@pytest.mark.parametrize("text", [
    b"<< >>%>>\n%>> \r\nstream", b"<< >>% x >> stream\n>>\nstream", b">>>\nstream>>>>stream", b"%>>%>>stream\n",
    b">> %>>\r%\n  stream>> % >>\n", b"%>>", b">>%>>\n%>>\nx>> stream",
])
def test_keywords_are_the_ones_a_pattern_finds(text: bytes) -> None:
    assert list(pdf._keywords(text)) == [m.span() for m in pdf.KEYWORD.finditer(text)]


@pytest.mark.parametrize("padding", [b"%>>\n" * 8000, b"%>>" * 500 + b"x" * 1_000_000 + b"\n"],
                         ids=["lines", "one-line"])
def test_comments_of_dictionary_ends_are_read_once(padding: bytes) -> None:
    # 8,000 lines of %>>, or 500 on one line a megabyte long: each ">>" read the rest of it.
    document, _ = hostile()
    padded = document + b"<< /Pad 1 >>" + padding + b"x\n"
    started = time.perf_counter()
    found = pdf.look(padded)
    took = time.perf_counter() - started
    assert [s.obj for s, names in found.active if "JavaScript" in names] == ["7 0"]
    assert took < 0.5, f"{padding[:8]!r}... read in {took:.2f} s"
