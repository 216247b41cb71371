"""The dataset probe starts its interpreter without site (``-S``): stdlib only, so no site-packages
scan and no .pth file run before a host sums its files (verify-dataset's critical path)."""
import json
import os
import sys

from tests.unit.test_sync_fixed_cost import local_host
from thunderlane import remote
from thunderlane.lab.fixtures.corpus import build_corpus
from thunderlane.onhost import probe


def wrapper(tmp_path):
    """A local 'python' that logs its arguments, then runs this interpreter with them."""
    log = tmp_path / "argv.log"
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {log}\nexec {sys.executable} "$@"\n')
    os.chmod(path, 0o755)
    return str(path), log


def test_the_dataset_probe_runs_without_site_and_answers_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no kept copy of the probe yet, whatever the real home holds
    python, log = wrapper(tmp_path)
    inv = local_host(tmp_path, python=python)
    build_corpus(tmp_path / "data", rows=50)
    for args in (["dataset", str(tmp_path / "data"), "--sums"], ["dataset", str(tmp_path / "data")]):
        got = remote.run_probe(inv, inv.local, args)
        assert got.pop("python") == sys.version.split()[0]
        assert got == json.loads(json.dumps(probe.command(args)))
    assert log.read_text().split() == ["-S", "-S", "-S"]  # stub, source, stub (versions: test_probe_lean.py)
