"""Developer tasks (Invoke): `inv test`, `inv lint`, `inv demo`, `inv bench`, `inv reliability`. The
operator's tasks are in fabfile.py (`fab --list`). Run with .venv/bin/inv after ./bootstrap."""
import os
import shlex
import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LAB_INVENTORY = ROOT / ".lab" / "hosts.yaml"


@task(help={"k": "only tests matching this pytest -k expression", "unit": "unit tests only (no lab)"})
def test(c, k="", unit=False):
    """Run the test suite: unit tests, then the lab's integration tests (real sshd, rsync, mlx)."""
    target = "tests/unit" if unit else "tests"
    select = f" -k {shlex.quote(k)}" if k else ""
    c.run(f"{BIN / 'python'} -m pytest {target}{select}", pty=False)


@task
def lint(c):
    """Launcher portability lint (bash 3.2, BSD tools, old rsync) and shellcheck."""
    c.run(f"{BIN / 'python'} -m thunderlane.portability launchers/*.sh")
    c.run("shellcheck -s bash launchers/*.sh")


@task(help={"hosts": "lab hosts (default mac4,mac5)", "model_mb": "model size in MB"})
def demo(c, hosts="mac4,mac5", model_mb=2.0):
    """The handoff on the lab: verify, sync mac4, verify; then `fab handoff` from a fresh lab.

    lab-up (mac4 partial), verify-dataset, verify-cache (mac4 fails), sync-cache --host mac4,
    verify-cache --deep (all complete); then after a reseed (mac4 partial again) `fab handoff`: the
    whole job, to a mirrored step-10 checkpoint and its report."""
    fab = BIN / "fab"
    env = {"THUNDER_INVENTORY": str(LAB_INVENTORY)}
    lab_up = f"{fab} lab-up --hosts {shlex.quote(hosts)} --model-mb {model_mb} --reseed"
    c.run(lab_up, env=env)
    steps = [("verify-dataset", True), ("verify-cache", False),
             (f"sync-cache --host {shlex.quote(hosts.split(',')[0])}", True), ("verify-cache --deep", True)]
    for step, must_pass in steps:
        print(f"\n$ THUNDER_INVENTORY={os.path.relpath(LAB_INVENTORY)} fab {step}", flush=True)
        r = c.run(f"{fab} {step}", env=env, warn=True)
        if must_pass and not r.ok:
            raise Exit(f"demo: `fab {step}` failed", code=1)
    c.run(lab_up, env=env, hide=True)
    print(f"\n$ THUNDER_INVENTORY={os.path.relpath(LAB_INVENTORY)} fab handoff   # mac4 partial again", flush=True)
    if not c.run(f"{fab} handoff", env=env, warn=True).ok:
        raise Exit("demo: `fab handoff` failed", code=1)
    print("\nThe lab is still up: `.venv/bin/fab lab-down` stops it.")


@task(help={"k": "only the fault tests matching this pytest -k expression (the table then has only those)",
            "basetemp": "pytest's --basetemp (a private lab folder)"})
def reliability(c, k="", basetemp=""):
    """Run the fault suite (every test marked fault_case) and write docs/RELIABILITY.md's table from it."""
    args = (f" -k {shlex.quote(k)}" if k else "") + (f" --basetemp {shlex.quote(basetemp)}" if basetemp else "")
    with c.cd(str(ROOT)):
        c.run(f"{BIN / 'python'} -m tests.lab.reliability{args}", pty=False)


@task(help={"model_mb": "model size for the byte-bound figures (default 1000)",
            "only": "comma-separated figure scripts, e.g. sync,mirror"})
def bench(c, model_mb=1000, only=""):
    """Run the benchmarks on their own lab and write docs/BENCHMARKS.md (takes about 10 minutes)."""
    select = f" --only {shlex.quote(only)}" if only else ""
    c.run(f"{BIN / 'python'} bench/run_all.py --model-mb {model_mb}{select}", pty=False)
