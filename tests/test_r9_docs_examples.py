"""Outside round 9, area G: worked examples of docs/ followed literally, their shown output compared
with what the commands print.

- docs/ids.md, "A worked custom rule": the rule file, `ids rules check` (the page said 20 rules where
  the built-in set and the site rule make 21), `ids rules test` and the typo that is caught.
- docs/witness.md, "Running a witness service": the witness's pacsguard.yaml named `witness.pem`,
  a file nothing makes (`pacsguard tls make-cert witness` writes witness.crt), so that `witness
  serve` stopped on it; the page now says how the certificate is made, and its configuration, with
  the files made as the page says, passes `config check`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pacsguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60)


def _section(page: str, title: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else None]


def _console(block: str) -> list[tuple[str, list[str]]]:
    """A ```console block as (command, the lines shown after it) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:].removeprefix("pacsguard "), []))
        elif pairs:
            pairs[-1][1].append(line)
    return pairs


def test_the_ids_worked_custom_rule_prints_what_the_page_shows(tmp_path: Path) -> None:
    section = _section("ids.md", "## A worked custom rule")
    rule = re.search(r"```yaml\n(.*?)```", section, re.S)
    consoles = re.findall(r"```console\n(.*?)```", section, re.S)
    assert rule is not None and len(consoles) == 2, section
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "research.yaml").write_text(rule.group(1))
    # burst.yaml: the two observations shown and "18 more within the minute" like them.
    (tmp_path / "burst.yaml").write_text("".join(
        f"- {{kind: dimse-request, at: {at}, client_host: 10.99.1.7, calling_ae: RES7, service: C-FIND}}\n"
        for at in range(20)))
    shown = dict(_console(consoles[0]))
    where = "/etc/pacsguard/rules"

    check = _pacsguard("ids", "rules", "check", "rules", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == shown[f"ids rules check {where}"][0].replace(where, "rules")

    test = _pacsguard("ids", "rules", "test", "rules/research.yaml", "--events", "burst.yaml", cwd=tmp_path)
    assert test.returncode == 1 == int(shown["echo $?"][0]), test.stdout + test.stderr
    alert, summary = shown[f"ids rules test {where}/research.yaml --events burst.yaml"]
    printed = [line for line in test.stdout.splitlines() if line.strip()]
    assert printed[-1] == summary, test.stdout
    assert printed[0].startswith(alert.rstrip(".; ")), test.stdout

    typo = dict(_console(consoles[1]))
    (rules / "research.yaml").write_text(rule.group(1).replace("within: 1m", "within: 1 minute"))
    check = _pacsguard("ids", "rules", "check", "rules", cwd=tmp_path)
    assert check.returncode == 2 == int(typo["echo $?"][0]), check.stdout + check.stderr
    assert " ".join(check.stderr.split()) == typo[f"ids rules check {where}"][0].replace(where, "rules")


def test_the_witness_service_set_up_as_the_page_says_passes_config_check(tmp_path: Path) -> None:
    section = _section("witness.md", "## Running a witness service")
    config = re.search(r"```\n(store:.*?)```", section, re.S)
    make_cert = re.search(r"`(pacsguard tls make-cert witness [^`]*)`", section.replace("\n", " "))
    assert config is not None and make_cert is not None, section
    made = _pacsguard("tls", "make-ca", "--out", ".", "--cn", "Hospital CA", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    words = make_cert.group(1).split()[1:]
    made = _pacsguard(*words, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # What the page says to copy here: the log's public key and a token file (its path in the
    # example is absolute; here it is the test's folder).
    from pacsguard.store import keys

    (tmp_path / "keys").mkdir()
    keys.generate_key(tmp_path / "gw1.key")
    (tmp_path / "keys" / "radiology-gw1.pub").write_bytes((tmp_path / "gw1.key.pub").read_bytes())
    (tmp_path / "token").write_text("0" * 64 + "\n")
    yaml = config.group(1).replace("/etc/pacsguard/token-radiology-gw1", str(tmp_path / "token"))
    yaml = yaml.replace("host: 0.0.0.0", "host: 127.0.107.11")
    (tmp_path / "pacsguard.yaml").write_text(yaml)
    check = _pacsguard("config", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
