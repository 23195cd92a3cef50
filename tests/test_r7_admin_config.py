"""Outside round 7, a PACS administrator's first configuration: a secret written inline by mistake
is never quoted back, a password in the store URL's query is refused, a relative secret file is
read beside pacsguard.yaml, a misspelt key names the key it resembles, and an emptied section
takes its defaults (docs/configuration.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pacsguard.config import ConfigError, load_config, parse_config
from terminal import PACSGUARD

SECRET = "hunter2-do-not-show"


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    environ.pop("PACSGUARD_CONFIG", None)
    return subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=environ)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("text, key", [
    (f"store: {{password: {SECRET}}}\n", "store.password"),
    (f"store: {{password: '{SECRET}'}}\n", "store.password"),
    (f"atna: {{http: {{port: 8089, token: {SECRET}}}}}\n", "atna.http.token"),
    (f"store: {{witnesses: [{{url: 'http://127.0.66.2:8471', token: {SECRET}}}]}}\n", "store.witnesses.0.token"),
    (f"witness: {{logs: [{{name: a, public_key: a.pub, token: {SECRET}}}]}}\n", "witness.logs.0.token"),
])
def test_an_inline_secret_is_never_quoted_back(tmp_path: Path, text: str, key: str) -> None:
    """`config check` (and `serve`, whose stderr systemd keeps in the journal) named the key and then
    quoted the password itself: "Input should be ... SecretRef (got 'hunter2')"."""
    (tmp_path / "pacsguard.yaml").write_text(text)
    for args in (["config", "check"], ["serve"]):
        proc = run(tmp_path, *args)
        assert proc.returncode == 2, proc.stderr
        assert SECRET not in proc.stderr + proc.stdout
        assert f"{key}: a secret is never written in the file" in proc.stderr
        assert "{env: NAME}" in proc.stderr and "SecretRef" not in proc.stderr


@pytest.mark.parametrize("query", [f"password={SECRET}", f"sslmode=disable&password={SECRET}",
                                   f"PassWord={SECRET}", f"sslpassword={SECRET}"])
def test_a_password_in_the_store_url_query_is_refused_and_never_shown(tmp_path: Path, query: str) -> None:
    """libpq reads `?password=` as it reads `user:password@`; only the second was refused, and
    `config show`, whose output is "secrets masked", printed the first as written."""
    (tmp_path / "pacsguard.yaml").write_text(f'store:\n  url: "postgresql://pacsguard@127.0.66.3:5432/audit?{query}"\n')
    for args in (["config", "check"], ["config", "show"]):
        proc = run(tmp_path, *args)
        assert proc.returncode == 2, proc.stdout
        assert SECRET not in proc.stdout
        assert "store.url: the URL holds a password in its query" in proc.stderr


def test_a_store_url_query_without_a_password_still_passes() -> None:
    config = parse_config('store: {url: "postgresql://pacsguard@127.0.66.3:5432/audit?sslmode=require"}\n')
    assert config.store.url.endswith("?sslmode=require")


def test_a_relative_secret_file_is_read_beside_the_configuration(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the working directory is /var/lib/pacsguard and the file /etc/pacsguard/pacsguard.yaml:
    `{file: db-password}` was read from the working directory, not beside the file."""
    etc, elsewhere = tmp_path / "etc", tmp_path / "var-lib"
    etc.mkdir()
    elsewhere.mkdir()
    (etc / "db-password").write_text("the-right-one\n")
    (elsewhere / "db-password").write_text("the-wrong-one\n")
    (etc / "pacsguard.yaml").write_text("store:\n  url: postgresql://pacsguard@127.0.66.3:5432/audit\n"
                                        "  password: {file: db-password}\n")
    monkeypatch.chdir(elsewhere)
    loaded = load_config(etc / "pacsguard.yaml")
    assert loaded.config.store.password is not None
    assert loaded.config.store.password.resolve() == "the-right-one"


def test_a_relative_secret_path_that_is_a_folder_is_found_beside_the_configuration(tmp_path: Path) -> None:
    """`config check` looked for the secret file in the folder it ran in: a folder named like the
    secret beside pacsguard.yaml passed, and `serve` then failed."""
    etc = tmp_path / "etc"
    (etc / "db-password").mkdir(parents=True)
    (etc / "pacsguard.yaml").write_text("store:\n  url: postgresql://pacsguard@127.0.66.3:5432/audit\n"
                                        "  password: {file: db-password}\n")
    proc = run(tmp_path, "config", "check", "etc/pacsguard.yaml")
    assert proc.returncode == 2, proc.stdout
    assert "store.password" in proc.stderr and "not a regular file" in proc.stderr


def test_a_missing_secret_names_the_key_that_asked_for_it(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("store:\n  url: postgresql://pacsguard@127.0.66.3:5432/audit\n"
                                             "  password: {env: PACSGUARD_R7_ADMIN_UNSET}\n")
    proc = run(tmp_path, "events", "search", "--patient", "X")
    assert proc.returncode == 2
    assert "store.password: environment variable PACSGUARD_R7_ADMIN_UNSET is not set" in proc.stderr
    (tmp_path / "pacsguard.yaml").write_text("store:\n  url: postgresql://pacsguard@127.0.66.3:5432/audit\n"
                                             "  password: {file: no-such-file}\n")
    proc = run(tmp_path, "events", "search", "--patient", "X")
    assert proc.returncode == 2
    assert f"store.password: {tmp_path / 'no-such-file'}: no such secret file" in proc.stderr


@pytest.mark.parametrize("text, expected", [
    ("store: {checkpoint_intervl: 5}\n", "store.checkpoint_intervl: unknown key (did you mean checkpoint_interval?)"),
    ("gatway: {}\n", "gatway: unknown key (did you mean gateway?)"),
    ("gateway:\n  routes:\n    - name: a\n      listen: {port: 11112, ae_title: GW, ae_titel: X}\n"
     "      upstream: {host: 127.0.66.4, port: 104, ae_title: PACS}\n",
     "gateway.routes.0.listen.ae_titel: unknown key (did you mean ae_title?)"),
    ("ids: {thresholds: {some-rule: {cout: 3}}}\n", "ids.thresholds.some-rule.cout: unknown key (did you mean count?)"),
    ("store: {colour: red}\n", "store.colour: unknown key (check its spelling and section)"),
])
def test_a_misspelt_key_names_the_key_it_resembles(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_a_section_with_every_key_commented_out_takes_its_defaults() -> None:
    """`store:` with its keys commented out is YAML's null: it was "Input should be a valid dictionary
    or instance of StoreConfig", a Python class name the administrator never wrote."""
    config = parse_config("store:\n#  url: var/pacsguard.db\ngateway:\nmetrics:\n")
    assert config.store.url == "var/pacsguard.db"
    assert config.model_dump()["gateway"]["routes"] == []
    found = problems("gateway:\n  routes: [5]\n")
    assert found == ["gateway.routes.0: expected a mapping of keys (`key: value` lines under it) (got 5)"]


def test_a_file_that_is_not_utf8_is_named_by_line_and_column(tmp_path: Path) -> None:
    """Python's codec gave a byte offset ("can't decode byte 0xe9 in position 19"); an editor shows lines."""
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes('store:\n  url: "é'.encode() + b'\xe9.db"\n')
    with pytest.raises(ConfigError) as info:
        load_config(latin1)
    assert [str(p) for p in info.value.problems] == [
        "line 2, column 10: not UTF-8 text: byte 0xe9 (save the file as UTF-8)"]
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("store: {}\n".encode("utf-16"))
    with pytest.raises(ConfigError) as info:
        load_config(utf16)
    assert [str(p) for p in info.value.problems] == ["(file): is UTF-16 text; save it as UTF-8"]
