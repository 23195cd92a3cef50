"""pacsguard.yaml: every error names its key path and what was expected."""

from __future__ import annotations

import pytest

from pacsguard.config import ConfigError, parse_config


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def test_defaults_are_valid():
    cfg = parse_config("")
    assert cfg.store.url.endswith(".db") and not cfg.demo_upstream.enabled


def test_unknown_keys_are_errors_with_their_path():
    # A key close to one the section takes is named (outside round 7); one like none keeps the hint.
    assert _problems("store:\n  ur1: x\n") == ["store.ur1: unknown key (did you mean url?)"]
    assert _problems("stor: {}\n") == ["stor: unknown key (did you mean store?)"]
    assert _problems("store:\n  colour: x\n") == ["store.colour: unknown key (check its spelling and section)"]


def test_wrong_types_say_what_was_expected():
    probs = _problems("store:\n  checkpoint_interval: soon\ndemo_upstream:\n  port: 70000\n")
    assert probs[0].startswith("store.checkpoint_interval: Input should be a valid number") and "'soon'" in probs[0]
    assert probs[1].startswith("demo_upstream.port: Input should be less than or equal to 65535")


def test_broken_yaml_names_the_line():
    assert _problems("store:\n  url: [unclosed\n")[0].startswith("line 3, column 1: not valid YAML")


def test_not_a_mapping():
    assert _problems("- a\n- b\n") == ["(top level): expected a mapping of sections, got list"]


def test_secrets_never_inline():
    assert "store.password" in _problems('store:\n  url: "postgresql://u:secret@db/x"\n')[0]
    assert _problems("store:\n  password: hunter2\n")[0].startswith("store.password:")
    cfg = parse_config("store:\n  url: postgresql://u@db/x\n  password: {env: PG_PASS}\n")
    assert cfg.store.password.env == "PG_PASS"


def test_secret_resolution(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = parse_config(f"store:\n  password: {{file: {secret}}}\n")
    assert cfg.store.password.resolve() == "s3cret"
    cfg = parse_config("store:\n  password: {env: PG_TEST_PW}\n")
    monkeypatch.delenv("PG_TEST_PW", raising=False)
    with pytest.raises(LookupError, match="PG_TEST_PW is not set"):
        cfg.store.password.resolve()


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    probs = _problems("store:\n  url: a.db\n  checkpoint_interval: 5\n  url: b.db\n")
    assert len(probs) == 1 and "not valid YAML: key 'url' is given twice, on line 2 and on line 4" in probs[0]
    assert _problems("store: {}\nstore: {}\n")[0].endswith("key 'store' is given twice, on line 1 and on line 2")


def test_deep_nesting_is_refused_without_a_traceback() -> None:
    assert _problems("a: " + "[" * 5000 + "]" * 5000 + "\n") == ["(file): nested too deeply (at most 32 levels)"]
    assert _problems("store: " + "[" * 40 + "]" * 40 + "\n") == ["(file): nested too deeply (at most 32 levels)"]


def test_hostile_yaml_aliases_are_refused_at_once() -> None:
    """An alias inside its own anchor nests without end, and aliases of aliases multiply (the
    "billion laughs": 9 to the 8th values here); both are refused before any section is read."""
    import time

    started = time.monotonic()
    assert _problems("a: &a [*a]\n") == ["(file): nested too deeply (at most 32 levels)"]
    assert _problems("gateway: &g {routes: [*g]}\n") == ["(file): nested too deeply (at most 32 levels)"]
    laughs = "a: &a [" + ", ".join(["lol"] * 9) + "]\n"
    for name, previous in zip("bcdefgh", "abcdefg", strict=True):
        laughs += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    assert _problems(laughs) == ["(file): holds more than 100,000 values once its YAML aliases are expanded"]
    assert time.monotonic() - started < 5  # the old walk took ~20 s on the laughs alone


def test_a_huge_or_special_configuration_file_is_refused_before_reading(tmp_path) -> None:
    from pathlib import Path

    from pacsguard.config import load_config

    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(big)
    assert "a configuration is at most 1,048,576" in str(info.value.problems[0])
    with pytest.raises(ConfigError) as info:
        load_config(Path("/dev/zero"))
    assert [str(p) for p in info.value.problems] == ["(file): is not a regular file"]


def test_a_secret_file_must_be_a_small_regular_file(tmp_path) -> None:
    from pacsguard.config.schema import SecretRef

    assert _problems("store:\n  url: postgresql://u@h/db\n  password: {file: /dev/zero}\n")[0].startswith(
        "store.password: /dev/zero is not a regular file")
    good = tmp_path / "pw"
    good.write_text("s3cret\n")
    assert SecretRef(file=good).resolve() == "s3cret"
    good.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(LookupError, match="longer than 65,536 bytes"):
        SecretRef(file=good).resolve()
