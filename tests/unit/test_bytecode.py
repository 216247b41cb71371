"""fab (invoke) turns bytecode writing off; importing the lane turns it back to Python's own rule,
so a task's modules are read compiled rather than compiled on every run (thunderlane/__init__.py)."""
import os
import subprocess
import sys

from thunderlane import layout

PROBE = "import sys; sys.dont_write_bytecode = True; import thunderlane; print(sys.dont_write_bytecode)"


def writes(env_value):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if env_value is not None:
        env["PYTHONDONTWRITEBYTECODE"] = env_value
    env["PYTHONPATH"] = str(layout.ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "False"


def test_importing_the_lane_undoes_invokes_no_bytecode_but_keeps_the_users():
    assert writes(None)          # invoke's choice undone: the lane's modules are compiled once
    assert not writes("1")       # the user's PYTHONDONTWRITEBYTECODE stands


def test_bootstrap_compiles_the_lanes_modules():
    text = (layout.ROOT / "bootstrap").read_text(encoding="utf-8")
    assert "-m compileall -q thunderlane fabfile.py tasks.py" in text
