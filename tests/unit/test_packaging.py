"""The package metadata: ranges (not pins) for torch and friends, the exact pins in constraints.txt, one
version, a LICENSE that matches, and classifiers that agree with python_requires."""

from __future__ import annotations

import configparser
import importlib.metadata
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import lit_gen
from tests.conftest import ROOT


def _setup() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements() -> dict[str, Requirement]:
    lines = [line.strip() for line in _setup()["options"]["install_requires"].splitlines()]
    return {r.name: r for r in (Requirement(line) for line in lines if line and not line.startswith("#"))}


def test_install_requires_are_ranges_that_admit_the_constraints():
    requirements = _requirements()
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert {"torch", "torchvision"} <= set(pins)
    for name in ("torch", "torchvision", "lightning", "jsonargparse"):
        spec = requirements[name].specifier
        assert not any(s.operator in ("==", "===") for s in spec), f"{name} is pinned: {spec}"
        assert any(s.operator in ("<", "<=") for s in spec), f"{name} has no upper bound: {spec}"
        assert pins[name] in spec, f"constraints.txt's {name}=={pins[name]} is outside {spec}"
        assert importlib.metadata.version(name).split("+")[0] in spec


def test_version_license_and_classifiers_agree():
    metadata = _setup()["metadata"]
    assert metadata["version"].strip() == "attr: lit_gen.version.__version__"  # the one place
    assert importlib.metadata.version("lit_gen") == lit_gen.__version__
    assert metadata["license"].strip() == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    python = SpecifierSet(_setup()["options"]["python_requires"])
    versions = re.findall(r"Programming Language :: Python :: (3\.\d+)", metadata["classifiers"])
    assert versions and all(v in python for v in versions)
    for family in ("DDPM", "DDIM", "Improved DDPM", "guidance", "score SDEs", "NCSN", "normalizing flows",
                   "DALL-E"):
        assert family in metadata["description"], family  # every family that ships
