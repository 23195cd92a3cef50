"""`store.witnesses` and `witness:` in pacsguard.yaml: each mistake named with its key path."""

from __future__ import annotations

from pathlib import Path

from test_cli import run

BAD = """\
store:
  witnesses:
    - {file: a.jsonl, url: "http://127.0.0.1:1"}
    - {url: "ftp://x"}
    - {url: "http://127.0.0.1:8471"}
    - {file: a.jsonl, token: {env: X}}
    - {syslog: {host: siem.example, port: 0}}
witness:
  enabled: true
"""


def test_each_witness_mistake_is_named_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(BAD)
    err = run("config", "check", "pacsguard.yaml", cwd=tmp_path, check_code=2).stderr
    lines = [" ".join(line.split()) for line in err.splitlines()]
    assert "error: pacsguard.yaml: store.witnesses.0: give exactly one of file, syslog or url (found file, url)" \
        in lines
    assert any(line.startswith("error: pacsguard.yaml: store.witnesses.1: url: expected http://HOST:PORT")
               for line in lines)
    assert any(line.startswith("error: pacsguard.yaml: store.witnesses.2: a url witness needs the token")
               for line in lines)
    assert "error: pacsguard.yaml: store.witnesses.3: token: only a url witness takes these" in lines
    assert any(line.startswith("error: pacsguard.yaml: store.witnesses.4.syslog.port:") for line in lines)
    assert "error: pacsguard.yaml: witness: an enabled witness needs logs: [{name, public_key, token}]" in lines


def test_a_good_witness_configuration_checks_ok(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("""\
store:
  witnesses:
    - file: /mnt/offsite/checkpoints.jsonl
    - syslog: {host: siem.example, transport: tcp}
    - {url: "https://witness.example:8471", token: {env: WITNESS_TOKEN}, ca_file: ca.pem}
witness:
  enabled: true
  logs:
    - {name: site-a, public_key: keys/site-a.pub, token: {file: token-a}}
""")
    from pacsguard.tls import make_ca

    # config check loads every TLS file as serve does (outside round 9): the CA named must be one.
    make_ca(tmp_path, "Witness CA")[0].rename(tmp_path / "ca.pem")
    out = run("config", "check", "pacsguard.yaml", cwd=tmp_path).stdout
    assert "store (spine): OK" in out and "witness (witness): OK" in out


def test_a_damaged_ledger_stops_witness_serve_with_one_line(tmp_path: Path) -> None:
    from pacsguard.store.keys import generate_key

    generate_key(tmp_path / "site.key")
    (tmp_path / "token").write_text("t\n")
    (tmp_path / "pacsguard.yaml").write_text("""\
witness:
  enabled: true
  port: 0
  logs: [{name: site-a, public_key: site.key.pub, token: {file: token}}]
""")
    run("init", cwd=tmp_path)
    (tmp_path / "var/witness").mkdir(parents=True, exist_ok=True)
    (tmp_path / "var/witness/0123456789abcdef.jsonl").write_text("{not json\n")
    err = run("witness", "serve", cwd=tmp_path, check_code=2).stderr
    assert "0123456789abcdef.jsonl line 1: not a held checkpoint" in " ".join(err.split())
