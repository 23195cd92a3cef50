"""Round 11, helper S (outside fuzzing of the scanner's cross-reference reader, ISO 32000-1
7.3.7, 7.5.8): dictionaries that do not end. Each object whose dictionary says /Type /XRef is
read as a cross-reference stream (what a viewer rebuilding a damaged file finds), its dictionary
read to its ">>". Objects whose "<<" never closes, one after another, each nested in the one
before, were each read to the end of the document: 2,000 of them (125 KB) read some two million
tokens, seconds per document (and again for every Encapsulated Document of a DICOM file), and
spent the tokens allowed (documents.pdf-unscanned, medium, for a bound a writer reaches with a
small file). A dictionary found not to end before the document does is now known as such, and
one around it ends its reading there."""

from __future__ import annotations

import time

from pdf_samples import hostile

from pacsguard.scan import pdf


def test_dictionaries_that_never_end_are_read_once() -> None:
    document, _ = hostile()
    unended = b"".join(b"%d 0 obj\n<< /Type /XRef /W [1 4 2] /Size 10\nendstream\nendobj\n" % (100 + n)
                       for n in range(2000))
    started = time.perf_counter()
    found = pdf.look(document + unended)
    took = time.perf_counter() - started
    assert not found.unread, found.unread
    assert [s.obj for s, names in found.active if "JavaScript" in names] == ["7 0"]
    assert took < 1.0, f"2,000 dictionaries without an end read in {took:.2f} s"
