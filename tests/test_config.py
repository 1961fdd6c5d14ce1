"""Configuration and rules validation: every problem named by file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_shipped_config_and_rules_are_valid():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(ROOT / "config.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ok: 1 destination(s), 1 rule(s)" in out.stdout


def test_every_problem_named_with_file_key_and_reason(tmp_path):
    path = write(
        tmp_path,
        "ae_title: GATEWAY\ndimse: {port: notaport, colour: red}\n"
        "destinations:\n  pacs: {type: dicom, ae_title: PACS, host: h}\n  x: {type: ftp}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    lines = exc.value.problems
    assert (
        f"{path}: dimse.port: Input should be a valid integer, unable to parse string as an integer"
        in lines
    )
    assert f"{path}: dimse.colour: unknown key" in lines
    assert any(line.startswith(f"{path}: destinations.pacs.port: Field required") for line in lines)
    assert any(line.startswith(f"{path}: destinations.x:") and "ftp" in line for line in lines)
    assert len(lines) == 4


def test_check_command_exits_non_zero_with_one_line_per_problem(tmp_path):
    path = write(tmp_path, "dimse: {port: 70000}\nworkers: {count: 0}\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"{path}: dimse.port: Input should be less than or equal to 65535",
        f"{path}: workers.count: Input should be greater than or equal to 1",
    ]


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "ae_title: GATEWAY\ndimse:\n  port: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert exc.value.problems[0].startswith(f"{path}: line 4:")


def test_environment_overrides_nested_keys(tmp_path):
    path = write(tmp_path, "dimse: {port: 104}\n")
    env = {
        "GATEWAY__DIMSE__PORT": "4242",
        "GATEWAY__DIMSE__ALLOWED_CALLING_AETS": "[CT1, MR2]",
        "GATEWAY__AE_TITLE": "EDGE",
        "GATEWAY__DATA_DIR": "/srv/gw",
        "OTHER": "x",
    }
    cfg = load_config(path, environ=env)
    assert cfg.dimse.port == 4242
    assert cfg.dimse.allowed_calling_aets == ("CT1", "MR2")
    assert cfg.ae_title == "EDGE"
    assert cfg.data_dir == Path("/srv/gw")


def test_environment_override_errors_name_the_key(tmp_path):
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"GATEWAY__WORKERS__COUNT": "many"})
    assert exc.value.problems[0].startswith(f"{path}: workers.count:")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = write(tmp_path, "data_dir: ./d\nrules_dir: r\n")
    cfg = load_config(path, environ={})
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.rules_dir == tmp_path / "r"


def test_calling_ae_pinned_to_networks(tmp_path):
    path = write(
        tmp_path,
        "dimse:\n  allowed_calling_aets:\n    - CT1\n"
        "    - {ae_title: MR1, hosts: [10.0.0.7, 192.168.1.0/24]}\n",
    )
    aets = {a.ae_title: a for a in load_config(path, environ={}).dimse.calling_aets()}
    assert aets["CT1"].admits("172.16.0.1")
    assert aets["MR1"].admits("10.0.0.7") and aets["MR1"].admits("192.168.1.77")
    assert not aets["MR1"].admits("10.0.0.8")
    bad = write(tmp_path, "dimse:\n  allowed_calling_aets: [{ae_title: X, hosts: [nonsense]}]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad, environ={})
    assert "dimse.allowed_calling_aets.0" in exc.value.problems[0]
