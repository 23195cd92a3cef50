"""pacsguard.yaml as an outside tester found it (round 5): `config check` passed settings that
`serve` then refused, or took in a form the administrator did not mean. Each test failed before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.config import ConfigError, parse_config

ROUTE = """gateway:
  routes:
    - name: {name}
      listen: {{host: {listen}, port: {port}, ae_title: GW}}
      upstream: {{host: {upstream}, port: {upstream_port}, ae_title: PACS}}
"""


def route(name: str = "r", listen: str = "127.0.0.1", port: object = 11112, upstream: str = "127.0.0.2",
          upstream_port: object = 104) -> str:
    return ROUTE.format(name=name, listen=listen, port=port, upstream=upstream, upstream_port=upstream_port)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("word", ["yes", "on", "true", "no"])
def test_a_yaml_boolean_is_no_number(word: str) -> None:
    """`port: yes` became port 1, `idle_timeout: on` 1.0 seconds."""
    [found] = problems(route(upstream_port=word))
    assert found.startswith("gateway.routes.0.upstream.port: ") and "not the boolean" in found, found
    assert any("idle_timeout" in p for p in problems(route() + "      limits: {idle_timeout: on}\n"))
    parse_config(route() + "      limits: {idle_timeout: 30}\n")  # numbers still pass


def test_a_boolean_key_still_takes_booleans() -> None:
    parse_config("metrics: {enabled: yes}\n")


@pytest.mark.parametrize("host", ["999.1.1.1", "a b c", "", "-gw.example", "10.0.0.256"])
def test_a_host_that_is_no_address_nor_name_is_an_error(host: str) -> None:
    for text, key in ((route(listen=f'"{host}"'), "listen.host"), (route(upstream=f'"{host}"'), "upstream.host")):
        [found] = problems(text)
        assert found.startswith(f"gateway.routes.0.{key}: expected an IP address or a host name"), found


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "pacs.hospital.local", "localhost", "PACS-1"])
def test_addresses_and_host_names_pass(host: str) -> None:
    parse_config(route(listen=f'"{host}"', upstream=f'"{host}"'))


@pytest.mark.parametrize(("first", "second"), [("127.0.0.5", "0.0.0.0"), ("0.0.0.0", "127.0.0.5"),
                                               ("::1", "::"), ("0.0.0.0", "::")])
def test_a_wildcard_listener_clashes_with_any_route_on_its_port(first: str, second: str) -> None:
    text = route("a", listen=f'"{first}"') + route("b", listen=f'"{second}"').split("routes:\n", 1)[1]
    [found] = problems(text)
    assert "routes 'a' and 'b' both listen on port 11112" in found, found
    parse_config(route("a", listen='"127.0.0.5"') + route("b", listen='"127.0.0.6"').split("routes:\n", 1)[1])


def _check(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", "config", "check", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})


def test_config_check_finds_the_file_as_every_command_does(tmp_path: Path) -> None:
    """docs/deployment.md runs `config check -c FILE`; it was "No such option", and
    $PACSGUARD_CONFIG was ignored."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(route(listen='"999.1.1.1"'))
    (tmp_path / "sub").mkdir()
    for args, env in ((["-c", str(broken)], None), ([], {"PACSGUARD_CONFIG": str(broken)}), ([str(broken)], None)):
        done = _check(args, tmp_path / "sub", env)
        assert done.returncode == 2 and "listen.host" in done.stderr, (args, done.stdout, done.stderr)
    good = tmp_path / "good.yaml"
    good.write_text(route())
    done = _check([str(good)], tmp_path / "sub", {"PACSGUARD_CONFIG": str(broken)})  # FILE wins
    assert done.returncode == 0, done.stderr


def test_config_check_loads_the_tls_files_serve_loads(tmp_path: Path) -> None:
    """A listen TLS cert_file that does not exist was OK for `config check`, and `serve` refused."""
    text = route().replace("ae_title: GW}", f"ae_title: GW, tls: {{cert_file: {tmp_path}/gw.crt, "
                                             f"key_file: {tmp_path}/gw.key}}}}")
    (tmp_path / "p.yaml").write_text(text)
    done = _check(["p.yaml"], tmp_path)
    assert done.returncode == 2, done.stdout
    assert "gateway.routes.0.listen.tls: cert file" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


SHARED = """x-pacs: &pacs
  upstream: {host: 127.0.0.2, port: 104, ae_title: ARCHIVE}
  policy: {services: [C-ECHO, C-STORE]}
gateway:
  routes:
    - <<: *pacs
      name: ct
      listen: {host: 127.0.0.1, port: 11112, ae_title: GW}
    - <<: *pacs
      name: mr
      listen: {host: 127.0.0.1, port: 11113, ae_title: GW}
      upstream: {host: 127.0.0.3, port: 104, ae_title: OTHER}
"""


def test_a_yaml_merge_key_shares_settings_between_routes() -> None:
    """`<<: *base` was "not valid YAML: could not determine a constructor for the tag ...merge";
    the anchor's holder, a top-level x- key, is the file's own, as in Compose files."""
    routes = parse_config(SHARED).gateway.routes  # type: ignore[attr-defined]
    assert [r.upstream.ae_title for r in routes] == ["ARCHIVE", "OTHER"]  # the route's own key wins
    assert routes[0].policy.services == routes[1].policy.services
    [found] = problems(SHARED.replace("      name: ct\n", "      name: ct\n      name: again\n"))
    assert "given twice" in found, found  # the mapping's own keys are still checked for repeats
    [found] = problems("y-pacs: {}\n")
    assert found.startswith("y-pacs: unknown key"), found


def test_a_key_given_twice_on_one_line_is_an_error() -> None:
    """`{hosts: [10.0.0.0/8], hosts: [0.0.0.0/0]}` kept the last list (a re-probe, round 5)."""
    text = route() + "      policy: {hosts: [10.0.0.0/8], hosts: [0.0.0.0/0]}\n"
    [found] = problems(text)
    assert "'hosts' is given twice on line 6" in found, found


def test_a_boolean_in_a_list_of_numbers_is_an_error() -> None:
    [found] = problems("ids:\n  dicom_ports: [yes, 104]\n")
    assert found.startswith("ids.dicom_ports: ") and "booleans" in found, found


@pytest.mark.parametrize(("section", "key"), [("metrics: {host: ''}", "metrics.host"),
                                              ("witness: {host: '999.1.1.1'}", "witness.host"),
                                              ("atna: {tcp: {host: 'a b', port: 601}}", "atna.tcp.host"),
                                              ("sinks: {syslog: {host: ''}}", "sinks.syslog.host")])
def test_every_host_key_takes_an_address_or_a_name(section: str, key: str) -> None:
    """metrics.host '' listened on every interface; only the gateway's hosts were checked."""
    found = problems(section + "\n")
    assert any(p.startswith(f"{key}: expected an IP address or a host name") for p in found), found
