"""The hosts' pinned requirements file: read exactly, and in step with pyproject.toml."""
import tomllib
from pathlib import Path

import pytest

from thunderlane import requirements
from thunderlane.requirements import Pin, RequirementsError

ROOT = Path(__file__).resolve().parents[2]
CONTROL_ONLY = {"rapidfuzz"}  # pinned in pyproject.toml for the control machine's fab evaluate, not on hosts
WANTED = {"mlx", "mlx-lm", "huggingface-hub", "hf-xet", "transformers", "tokenizers", "numpy", "safetensors"}


def test_the_shipped_file_pins_every_package_the_issue_names_exactly():
    pins = requirements.load()
    assert set(requirements.names(pins)) == WANTED
    assert requirements.for_platform(pins, "linux")["mlx"] == requirements.for_platform(pins, "darwin")["mlx"]
    assert {p.platform for p in pins if p.name == "mlx"} == {"linux", "darwin"}
    assert [p.extras for p in pins if p.platform == "linux"] == ["cpu"]


def test_pyproject_pins_the_same_versions_and_needs_python_3_11():
    """The control machine runs the hosts' set: every host pin is a pyproject dependency, same
    name, extras, version and platform."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [d for d in project["dependencies"] if "==" in d and d.split("==")[0] not in CONTROL_ONLY]
    assert set(requirements.load()) == set(requirements.parse("\n".join(pinned), "pyproject.toml"))
    assert project["requires-python"] == ">=3.11"


def test_a_line_is_parsed_with_its_platform_and_names_are_canonical():
    pins = requirements.parse('# c\nmlx[cpu]==0.32.4; sys_platform == "linux"\nHuggingFace_Hub==2.4.0  # x\n')
    assert pins == (Pin("mlx", "0.32.4", "linux", "cpu"), Pin("huggingface-hub", "2.4.0"))
    assert requirements.for_platform(pins, "darwin") == {"huggingface-hub": "2.4.0"}


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "numpy==2; python_version < '3.12'", "-e ."])
def test_anything_but_an_exact_pin_is_refused_naming_file_and_line(line):
    with pytest.raises(RequirementsError, match=r"reqs.txt, line 2: "):
        requirements.parse(f"mlx-lm==0.32.2\n{line}\n", "reqs.txt")
