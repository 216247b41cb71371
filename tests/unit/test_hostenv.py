"""setup-hosts' decisions and the version parity of preflight/verify-cache, without ssh."""
import pytest

from thunderlane import hostenv, requirements
from thunderlane.facts import Versions

PINS = requirements.parse('mlx[cpu]==0.32.4; sys_platform == "linux"\nmlx==0.32.4; sys_platform == "darwin"\n'
                          "mlx-lm==0.32.2\nnumpy==2.4.6\n")
PY = "/Users/t/thunder-train/.venv/bin/python"


def versions(python="3.12.7", platform="darwin", **packages):
    base = {"mlx": "0.32.4", "mlx-lm": "0.32.2", "numpy": "2.4.6"}
    base.update({k.replace("_", "-"): v for k, v in packages.items()})
    return Versions.from_json({"python": python, "platform": platform, **base})


@pytest.mark.parametrize("python,venv", [(PY, "/Users/t/thunder-train/.venv"), ("/opt/v/bin/python3.12", "/opt/v"),
                                         ("/opt/homebrew/bin/pythonista", None), ("/usr/bin/python3", None),
                                         ("/opt/v/python", None), ("/bin/python", None)])
def test_only_a_venv_s_bin_python_names_a_venv(python, venv):
    assert hostenv.venv_dir(python) == venv


@pytest.mark.parametrize("text,version", [("3.12.7\n", (3, 12, 7)), ("Python 3.9.6", (3, 9, 6)), ("nope", None)])
def test_versions_are_read_as_printed(text, version):
    assert hostenv.parse_version(text) == version


def test_base_python_below_3_11_or_unset_is_refused_naming_host_and_version():
    assert "mac5: base_python /usr/bin/python3 is Python 3.9.6" in hostenv.check_base("mac5", "/usr/bin/python3", (3, 9, 6))
    assert "mac4: base_python is not set" in hostenv.check_base("mac4", None, None)
    assert hostenv.check_base("mac4", "/opt/homebrew/bin/python3.12", (3, 12, 7)) is None


def test_decide_creates_installs_only_what_differs_or_does_nothing():
    assert hostenv.decide("mac4", PY, (3, 12, 7), None, PINS).action == "create"
    assert hostenv.decide("mac4", PY, (3, 12, 7), versions(), PINS) == hostenv.Step("nothing", "every pin installed")
    step = hostenv.decide("mac4", PY, (3, 12, 7), versions(numpy="2.4.5", mlx_lm=None), PINS)
    assert step == hostenv.Step("install", "mlx-lm missing -> 0.32.2; numpy 2.4.5 -> 2.4.6")


def test_decide_refuses_a_non_venv_path_and_a_venv_of_another_python():
    assert hostenv.decide("mac4", "/usr/bin/python3", (3, 12, 7), None, PINS).action == "refuse"
    step = hostenv.decide("mac4", PY, (3, 12, 7), versions(python="3.11.9"), PINS)
    assert step.action == "refuse" and "runs Python 3.11.9, base_python is 3.12.7" in step.reason


def test_decide_never_installs_into_an_interpreter_that_is_not_a_venv_s():
    system = Versions.from_json({"python": "3.12.7", "platform": "darwin", "venv": False})
    step = hostenv.decide("mac4", "/Users/t/py/bin/python3", (3, 12, 7), system, PINS)
    assert step.action == "refuse" and "is not a venv's interpreter" in step.reason


def test_parity_names_both_sides_for_every_pinned_package_and_python():
    found = hostenv.parity({"mac4": versions(), "mac5": versions(python="3.12.8", numpy="2.4.5", mlx=None)}, PINS)
    assert found["mac4"] == []
    assert found["mac5"] == ["python 3.12.8 here but 3.12.7 on mac4",
                             "mlx is not installed for this host's lane python",
                             "numpy 2.4.5 here but 2.4.6 on mac4"]


def test_parity_refuses_hosts_that_agree_on_a_version_the_file_does_not_pin():
    found = hostenv.parity({"mac4": versions(numpy="2.0.0"), "mac5": versions(numpy="2.0.0")}, PINS)
    assert found == {h: ["numpy 2.0.0 here but host-requirements.txt pins 2.4.6"] for h in ("mac4", "mac5")}


def test_verify_cache_fails_a_complete_cache_on_a_host_whose_versions_differ():
    from thunderlane.report import HostResult, Report
    from thunderlane.verify import with_versions
    report = Report("verify-cache", (HostResult("local", "complete", True), HostResult("mac4", "complete", True),
                                     HostResult("mac5", "partial", False, "2 files missing")))
    out = with_versions(report, {"mac4": ["numpy 2.4.5 here but 2.4.6 on mac5"], "mac5": ["mlx 9 here"]})
    assert [(r.host, r.verdict, r.ok, r.detail) for r in out.results] == [
        ("local", "complete", True, ""), ("mac4", "versions", False, "numpy 2.4.5 here but 2.4.6 on mac5"),
        ("mac5", "partial", False, "2 files missing; mlx 9 here")]
