"""`store.witnesses.N.url` checked when pacsguard.yaml is read (outside round 11): a host `a..b`, a
space or a tab in the path, another scheme, `USER:PASSWORD@`, no host, a port outside 1-65535, a
query, or TLS files beside an http:// URL passed `config check` and failed only at the first
delivery (or, for a query, a tab, port 0 and the TLS files, never: the request went elsewhere, or
without the TLS asked for). Every URL the file takes is one the witness client makes a request of."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli import run

PASSWORD = "s3cret-in-url"

#: (URL, the words of its error after `store.witnesses.N: url: `).
BAD = [
    ("https://a..b/", "the host is neither an IP address nor a host name (RFC 1123), got 'a..b'"),
    ("https://witness.example/my path", "a URL holds no space or control character"),
    ("https://witness.example/a\tb", "a URL holds no space or control character"),
    ("ftp://witness.example/", "expected http://HOST:PORT or https://HOST:PORT"),
    (f"ftp://gw:{PASSWORD}@witness.example/", "got 'ftp://…@witness.example/'"),
    (f"https://gw:{PASSWORD}@witness.example/", "it holds a user name or password (USER:PASSWORD@HOST)"),
    ("https://:8471/", "it names no host"),
    ("https://witness.example:70000/", "the port is a number from 1 to 65535"),
    ("https://witness.example:0/", "the port is a number from 1 to 65535"),
    ("https://witness.example/base?site=a", "it holds a query (?) or fragment (#)"),
    ("https://::1:8471/", "an IPv6 address goes in brackets"),
]

GOOD = [
    "http://127.0.117.1:8471",
    "https://witness.hospital.example:8471/",
    "https://witness.hospital.example/pacsguard/witness",
    "https://[2001:db8::7]:8471",
    "https://bücher.example/a%20b",
]


def _yaml(items: list[str]) -> str:
    return "store:\n  witnesses:\n" + "".join(f"    - {item}\n" for item in items)


def _target(url: str) -> str:
    # A JSON string is a YAML flow scalar: the tab stays a tab, as an editor would write it.
    import json

    return f"{{url: {json.dumps(url)}, token: {{env: WITNESS_TOKEN}}}}"


def test_config_check_names_each_bad_witness_url_by_its_key(tmp_path: Path) -> None:
    plain_with_ca = "{url: 'http://witness.example:8471', token: {env: T}, ca_file: ca.pem}"
    (tmp_path / "bad.yaml").write_text(_yaml([_target(url) for url, _ in BAD] + [plain_with_ca]))
    err = run("config", "check", "bad.yaml", cwd=tmp_path, check_code=2).stderr
    lines = [" ".join(line.split()) for line in err.splitlines()]
    for n, (url, words) in enumerate(BAD):
        key = f"error: bad.yaml: store.witnesses.{n}: url: "
        assert any(line.startswith(key) and words in line for line in lines), (url, err)
    assert f"error: bad.yaml: store.witnesses.{len(BAD)}: ca_file: only an https:// url uses these" \
        in " ".join(lines)
    assert f"store (spine): {len(BAD) + 1} problems" in " ".join(lines)
    assert PASSWORD not in err  # the password in the URL is never quoted back


def test_config_check_takes_good_witness_urls(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(_yaml([_target(url) for url in GOOD]))
    assert "store (spine): OK" in run("config", "check", "good.yaml", cwd=tmp_path).stdout


@pytest.mark.parametrize("url", GOOD)
def test_the_witness_client_routes_every_url_the_file_takes(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.config.witness_url import witness_url_problem
    from pacsguard.witness.http import WitnessClient
    from pacsguard.witness.route import route

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert witness_url_problem(url) is None
    way = route(WitnessClient(url).checkpoints_url("0123456789abcdef"), url)
    assert way.target.endswith("/v1/logs/0123456789abcdef/checkpoints") and way.target.startswith("/")
    assert way.tls == url.startswith("https://")
    assert way.host.isascii() and 1 <= way.port <= 65535


def test_audit_verify_refuses_a_witness_url_the_file_would_refuse_before_reading_anything(tmp_path: Path) -> None:
    # `audit verify --witness URL` takes its URL from the command line: the same rules apply, and
    # the password is not quoted back either (the store given does not exist: the URL comes first).
    for url, words in BAD[:1] + BAD[5:6]:
        err = run("audit", "verify", "--store", str(tmp_path / "none.db"), "--witness", url, cwd=tmp_path,
                  check_code=2).stderr
        assert f"error: --witness: {words}" in " ".join(err.split()), err
        assert PASSWORD not in err
