"""Round 11, helper S (outside fuzzing of the scanner's cross-reference reader, ISO 32000-1
7.5.4-7.5.8): where the ``startxref`` offsets of a PDF lead (pacsguard.scan.xref.sections).

1. Each offset was read from where it pointed, the white space before an object or a table
   stepped over by a pattern: 200 offsets into one run of 4 MB of white space read it 200 times
   (some 10 s for a 4 MB file, minutes for ten thousand offsets). Each byte of white space is
   now stepped over once, and the place every such offset leads to is read once.
2. Each classic table (``xref``) had its trailer searched for up to 64 MiB on: a thousand
   ``xref`` keywords before 16 MB of padding searched 16 GB (seconds; ten thousand, before 64
   MB, minutes). The searches of a document now share a budget (four times 64 MiB); past it the
   document is said to be unread there (documents.pdf-unscanned, medium), as the other bounds
   of the reader are."""

from __future__ import annotations

import time

from pdf_samples import hostile

from pacsguard.scan import pdf

MB = 1024 * 1024


def test_offsets_into_one_run_of_white_space_read_it_once() -> None:
    # The hostile document (its catalog's /OpenAction and JavaScript in object stream 7, which
    # its cross-reference stream names), then 4 MB of white space and a hundred startxref
    # offsets into the run's first bytes: each is read to the run's end, where no object is.
    document, _ = hostile()
    run = len(document)
    padded = document + b" " * (4 * MB) + b"x\n"
    padded += b"".join(b"startxref\n%d\n%%%%EOF\n" % (run + 7 * n) for n in range(100))
    started = time.process_time()
    found = pdf.look(padded)
    took = time.process_time() - started
    assert not found.unread, found.unread
    assert [s.obj for s, names in found.active if "JavaScript" in names] == ["7 0"]
    assert took < 1.0, f"100 offsets into 4 MB of white space read in {took:.2f} s of CPU"


def test_tables_searched_for_their_trailers_share_a_budget() -> None:
    head = b"%PDF-1.7\n"
    tables = [len(head) + 5 * n for n in range(1000)]
    document = head + b"xref\n" * len(tables) + b"%" * (16 * MB) + b"\n"
    document += b"".join(b"startxref\n%d\n" % at for at in tables) + b"%%EOF\n"
    started = time.process_time()
    found = pdf.look(document)
    took = time.process_time() - started
    assert found.bound and any("past the table bytes allowed" in note for note in found.unread), found.unread
    # CPU time: ~1 s on a slow machine with the budget, ~10 s before it (each table searched the
    # 16 MB again); the bound tells the two apart on any machine the suite runs on.
    assert took < 4.0, f"1,000 tables before 16 MB read in {took:.2f} s of CPU"
