"""The hosts' pinned packages: ``launchers/host-requirements.txt``, read once into frozen pins.

``fab setup-hosts`` installs that file on every host; preflight and verify-cache compare every
package it names. Only the forms the file uses are accepted: ``name[extras]==version`` with an
optional ``; sys_platform == "..."`` marker, so the control side can tell, without pip, which pins
apply to a host (the host reports its ``sys.platform``).
"""
import re
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "launchers" / "host-requirements.txt"
LINE_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[A-Za-z0-9_,.-]+)\])?"
                     r"==(?P<version>[A-Za-z0-9.+!_-]+)"
                     r"(?:;\s*sys_platform\s*==\s*(?P<q>[\"'])(?P<platform>[a-z0-9]+)(?P=q))?")


class RequirementsError(ValueError):
    """A line of the requirements file this module cannot read; names the file and line."""


@dataclass(frozen=True)
class Pin:
    """One exact pin: the distribution (canonical name), its version, its platform (None: all)."""
    name: str
    version: str
    platform: str | None = None
    extras: str | None = None

    def applies(self, platform):
        return self.platform is None or self.platform == platform


def canonical(name):
    """A distribution's name as PEP 503 compares them: ``huggingface_hub`` -> ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text, where="<requirements>"):
    """The pins of a requirements text, in file order."""
    pins = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = LINE_RE.fullmatch(line)
        if not m:
            raise RequirementsError(f"{where}, line {number}: {raw.strip()!r} is not name==version "
                                    f"(optionally ; sys_platform == \"...\")")
        pins.append(Pin(canonical(m["name"]), m["version"], m["platform"], m["extras"]))
    return tuple(pins)


def load(path=PATH):
    path = Path(path)
    return parse(path.read_text(encoding="utf-8"), str(path))


@lru_cache(maxsize=None)
def shipped():
    """The pins of the shipped file (read once per process)."""
    return load()


def text(path=PATH):
    """The file's text as shipped to a host for ``pip install -r``."""
    return Path(path).read_text(encoding="utf-8")


def names(pins):
    """Every distribution named, once each, in file order."""
    return tuple(dict.fromkeys(p.name for p in pins))


def for_platform(pins, platform):
    """{name: version} of the pins that apply on ``platform`` (a host's ``sys.platform``)."""
    return {p.name: p.version for p in pins if p.applies(platform)}
