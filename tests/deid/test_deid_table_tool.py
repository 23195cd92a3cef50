"""tools/annex_e_table.py reads Table E.1-1 from either form of PS3.15 NEMA publishes (DocBook
source and HTML rendering) into the same annex_e.tsv lines, and names the edition and the input."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from pacsguard.deid.profile import parse_table

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "annex_e_table.py"
_HEADS = ["Attribute Name", "Tag", "Retd. (from PS3.6)", "In Std. Comp. IOD (from PS3.3)", "Basic Prof.",
          "Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.", "Rtn. Dev. Id. Opt.", "Rtn. Inst. Id. Opt.",
          "Rtn. Pat. Chars. Opt.", "Rtn. Long. Full Dates Opt.", "Rtn. Long. Modif. Dates Opt.", "Clean Desc. Opt.",
          "Clean Struct. Cont. Opt.", "Clean Graph. Opt."]
#: Invented rows: a name split by a zero-width space (as the standard does in long names), a
#: repeating-group tag with option cells, and the private-attributes row every table has.
_ROWS = [["Study\u200b Weather", "(0099,0010)", "N", "Y", "X", "", "", "", "", "", "K", "C", "", "", ""],
         ["Plane Notes", "(60xx,0099)", "N", "N", "X", "", "", "", "", "", "", "", "C", "", "C"],
         ["Private Attributes", "(gggg,eeee) where gggg is odd", "N", "N", "X", "C", "", "", "", "", "", "", "", "",
          ""]]
_EXPECTED = ["(0099,0010)\tStudy Weather\tN\tY\tX\t\t\t\t\t\tK\tC\t\t\t",
             "(60XX,0099)\tPlane Notes\tN\tN\tX\t\t\t\t\t\t\t\tC\t\tC",
             "(GGGG,EEEE) WHERE GGGG IS ODD\tPrivate Attributes\tN\tN\tX\tC\t\t\t\t\t\t\t\t\t"]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("annex_e_table", _TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docbook() -> str:
    def cell(text: str, tag: str = "td") -> str:
        return f"<{tag}><para>{text}</para></{tag}>" if text else f"<{tag}/>"

    head = "".join(cell(h.replace(" (from PS3.6)", " (from <olink/>)").replace(" (from PS3.3)", " (from <olink/>)"),
                        "th") for h in _HEADS)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in _ROWS)
    return ('<?xml version="1.0" encoding="utf-8"?>\n<book xmlns="http://docbook.org/ns/docbook" '
            'xmlns:xl="http://www.w3.org/1999/xlink"><info><subtitle>DICOM PS3.15 2031a - Security</subtitle></info>'
            '<table xml:id="table_E.1-2"><tbody><tr><td><para>not this one</para></td></tr></tbody></table>'
            f'<table xml:id="table_E.1-1"><caption>x</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></book>")


def _html() -> str:
    head = "".join(f"<th><p>{h}</p></th>" for h in _HEADS)
    body = "".join("<tr>" + "".join(f"<td><p>{c}</p></td>" for c in row) + "</tr>" for row in _ROWS)
    return ('<html><body><h2 class="subtitle">DICOM PS3.15 2031a - Security</h2>'
            f'<a id="table_E.1-1"></a><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            "</body></html>")


@pytest.mark.parametrize("form", ["part15.xml", "part15.html"])
def test_both_forms_give_the_same_rows(form: str, tmp_path: Path) -> None:
    source = tmp_path / form
    source.write_text(_docbook() if form.endswith(".xml") else _html(), encoding="utf-8")
    out = _tool().render(source).splitlines()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert out[0] == f"# PS3.15 2031a Table E.1-1 from {form} sha256:{digest}"
    assert out[2:] == _EXPECTED
    parsed = parse_table("\n".join(out))
    assert parsed.edition == "2031a"
    assert parsed.find(0x60020099).name == "Plane Notes"  # type: ignore[union-attr]


def test_a_document_without_the_table_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "part15.xml"
    source.write_text(_docbook().replace('xml:id="table_E.1-1"', 'xml:id="table_E.9-9"'), encoding="utf-8")
    with pytest.raises(ValueError, match="no PS3.15 edition or no Table E.1-1"):
        _tool().render(source)


def test_a_moved_column_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "part15.xml"
    swapped = _docbook().replace("Rtn. UIDs Opt.", "@@").replace("Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.")
    source.write_text(swapped.replace("@@", "Rtn. Safe Priv. Opt."), encoding="utf-8")
    with pytest.raises(ValueError, match="unexpected columns"):
        _tool().render(source)
