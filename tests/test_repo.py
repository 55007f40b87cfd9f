"""What an open course repository carries: a LICENSE matching pyproject.toml, a citation file whose
license and version agree, a contributing note."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"], "LICENSE is not the Apache-2.0 text"
    assert "END OF TERMS AND CONDITIONS" in text


def test_citation_agrees_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["license"] == project["license"]["text"]
    assert str(citation["version"]) == project["version"]
    assert (ROOT / "CONTRIBUTING.md").read_text().count("bash .ci/run") >= 1
