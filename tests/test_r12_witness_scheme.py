"""A witness URL's scheme in capitals (outside round 12). RFC 3986 3.1: a scheme is case-insensitive,
lower case its normal form. `HTTPS://witness:8471` in pacsguard.yaml passed no check ("expected
http://HOST:PORT or https://HOST:PORT") and `audit verify --witness HTTPS://...` was read as a file
name. And `audit patient --witness URL` checked its URL by no rule: a `USER:PASSWORD@` in it went
into the signed report (the witness's `source`) and its error lines."""

from __future__ import annotations

from pathlib import Path

from test_cli import run
from test_r11G_witness_url import PASSWORD, _target, _yaml


def test_a_witness_url_in_capitals_is_taken_and_used_in_lower_case(tmp_path: Path) -> None:
    from pacsguard.config.schema import WitnessTarget

    (tmp_path / "caps.yaml").write_text(_yaml([_target("HTTPS://witness.hospital.example:8471/"),
                                               _target("Http://127.0.117.1:8471")]))
    assert "store (spine): OK" in run("config", "check", "caps.yaml", cwd=tmp_path).stdout
    target = WitnessTarget.model_validate({"url": "HTTPS://Witness.example:8471/Base", "token": {"env": "T"}})
    assert target.url == "https://Witness.example:8471/Base"  # only the scheme is normalised
    # TLS files beside HTTP:// are refused as beside http:// (the token would go in the clear).
    (tmp_path / "plain.yaml").write_text(_yaml(["{url: 'HTTP://witness.example:8471', token: {env: T}, "
                                                "ca_file: ca.pem}"]))
    err = run("config", "check", "plain.yaml", cwd=tmp_path, check_code=2).stderr
    assert "ca_file: only an https:// url uses these" in " ".join(err.split()), err


def test_audit_verify_takes_a_witness_url_in_capitals_as_a_url(tmp_path: Path) -> None:
    # Read as a URL, not a file: a store with no checkpoint has no log to ask the witness about.
    err = run("audit", "verify", "--store", str(tmp_path / "none.db"), "--witness", "HTTPS://127.0.117.1:9/",
              cwd=tmp_path, check_code=2).stderr
    assert "No such file" not in err and "witness file" not in err, err
    err = run("audit", "verify", "--store", str(tmp_path / "none.db"), "--witness",
              f"HTTPS://gw:{PASSWORD}@witness.example/", cwd=tmp_path, check_code=2).stderr
    assert "error: --witness: it holds a user name or password" in " ".join(err.split()), err
    assert PASSWORD not in err


def test_audit_patient_refuses_a_witness_url_with_a_password_before_reading_anything(tmp_path: Path) -> None:
    err = run("audit", "patient", "PID-1^^^HOSP", "--store", str(tmp_path / "none.db"), "--witness",
              f"https://gw:{PASSWORD}@witness.example/", cwd=tmp_path, check_code=2).stderr
    assert "error: --witness: it holds a user name or password" in " ".join(err.split()), err
    assert PASSWORD not in err
