"""The defensive reader: never raises, never recurses, and bounds what a file may cost."""

from __future__ import annotations

import time
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scan_samples import base, ct, deflate_bomb, encode, nesting_bomb

from pacsguard.scan import part10
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CT = ct()


def test_a_clean_file_is_walked_to_its_end() -> None:
    parsed = part10.read(CT)
    assert parsed.part10 and parsed.explicit and parsed.little
    assert parsed.end == len(CT) and not parsed.stopped and parsed.problems == []
    assert parsed.text(0x00100020)  # Patient ID
    assert parsed.top(part10.PIXEL_DATA) is not None


def test_a_frame_count_of_unicode_digits_is_no_structure_error() -> None:
    """Number of Frames (0028,0008) made of "\u00b2", a digit to str.isdigit but not to int():
    read as one frame, not a rule that failed (once, a ValueError reported as structure.error)."""
    ds = base()
    ds.NumberOfFrames = "1"
    data = encode(ds)
    at = data.find(b"\x28\x00\x08\x00IS\x02\x001 ")
    assert at > 0
    odd = data[:at + 8] + "\u00b2 ".encode("latin-1") + data[at + 10:]
    assert [f.rule for f in Scanner().scan_bytes(odd, "frames").findings if f.rule.startswith("structure")] == []


def test_nesting_is_bounded_without_recursion() -> None:
    parsed = part10.read(nesting_bomb(100_000), part10.Limits(max_depth=32))
    assert [p.rule for p in parsed.problems] == ["structure.nesting-depth"]
    assert max(e.depth for e in parsed.elements) <= 32


def test_inflation_is_capped() -> None:
    parsed = part10.read(deflate_bomb(40 << 20), part10.Limits(max_inflated=4 << 20))
    assert len(parsed.body) <= 4 << 20
    assert any(p.rule == "structure.deflate-bomb" and p.level == Level.HIGH for p in parsed.problems)


def test_an_element_count_bomb_is_high() -> None:
    parsed = part10.read(CT, part10.Limits(max_elements=10))
    assert any(p.rule == "structure.too-many-elements" and p.level == Level.HIGH for p in parsed.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_files_never_raise(data: st.DataObject) -> None:
    buf = bytearray(CT)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(buf) - 1))
        buf[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    started = time.perf_counter()
    parsed = part10.read(bytes(buf[:cut]))
    assert time.perf_counter() - started < 2
    assert 0 <= parsed.end <= len(parsed.body)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_scan_without_raising(blob: bytes) -> None:
    report = Scanner().scan_bytes(bytes(128) + b"DICM" + blob, "fuzz")
    assert all(f.level in Level for f in report.findings)
    assert not any(f.rule.endswith(".error") for f in report.findings)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_hostile_samples_never_break_a_rule(scanner: Scanner, built: dict[str, bytes],
                                                     data: st.DataObject) -> None:
    """Every family and YARA over byte-flipped, cut hostile samples: no rule fails (``*.error``)."""
    name = data.draw(st.sampled_from(sorted(n for n in built if n != "deflate_bomb")))
    buf = bytearray(built[name])
    for _ in range(data.draw(st.integers(0, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    buf = buf[:data.draw(st.integers(1, len(buf)))]
    result = scanner.scan_bytes(bytes(buf), name)
    assert not [f.rule for f in result.findings if f.rule.endswith(".error")]
