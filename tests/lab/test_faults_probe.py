"""Fault case 22: a host that answers the probe with hostile output (docs/RELIABILITY.md)."""
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import FAB, ROOT, by_host

HOSTILE = r'''#!{python}
"""Stands in for a host's interpreter: answers every probe with hostile output ({mode})."""
import json, sys
mode, args = {mode!r}, sys.argv[sys.argv.index("-c") + 2:]  # after the program (python -S -c ... or -c ...)
count = len(json.loads(args[1])) if args[:1] == ["multi"] else 1
wrong = {{"exists": "yes", "files": [1, {{"size": "big"}}], "repo_dir": 5, "cache_root": ["x"], "ref": None,
         "entries": {{"a": 1}}, "root": 7, "manifest": "m", "free_bytes": "lots", "versions": [None]}}
if mode == "deep":  # nesting past any parser's recursion limit
    out = "[" * 200000 + "]" * 200000
elif mode == "deep-typed":  # nesting the JSON reader accepts, where the lane expects a mapping
    answer = "[" * 900 + "]" * 900
    out = answer if count == 1 else '{{"results": [' + ",".join([answer] * count) + "]}}"
elif mode == "types":
    out = json.dumps(wrong if count == 1 else {{"results": [wrong] * count}})
else:  # "huge": 100 MB before anything else
    block = b" " * 2**20
    try:
        for _ in range(100):
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.write(b"{{}}")
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.exit(0)
sys.stdout.write(out)
'''
EXPECT = {
    "deep": r"probe answer is nested too deeply to read",
    "deep-typed": r"probe answer malformed: \w+",
    "types": r"probe answer malformed: \w+",
    "huge": r"printed more than 64 MiB on one stream; stopped it",
}


def hostile_inventory(inv, tmp_path, mode):
    """A copy of the lab inventory whose mac5 runs the hostile interpreter."""
    script = tmp_path / "python"
    script.write_text(HOSTILE.format(python=inv.hosts["mac5"].python, mode=mode))
    script.chmod(0o755)
    data = yaml.safe_load(Path(inv.path).read_text())
    data["hosts"]["mac5"]["python"] = str(script)
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fab_measured(inventory, *args):
    """``fab ARGS --json`` to its end: (exit code, stdout, stderr, seconds, peak RSS in MiB of fab)."""
    env = dict(os.environ, THUNDER_INVENTORY=str(inventory))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([FAB, *args, "--json"], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), seconds, usage.ru_maxrss / 1024


@pytest.mark.fault_case("22", "a host answers the probe with hostile JSON",
                        "mac5's interpreter in a test inventory is a script printing nesting 200,000 deep, "
                        "nesting 900 deep where a mapping belongs, wrong types in every field, or 100 MB")
@pytest.mark.parametrize("mode", list(EXPECT))
def test_22_hostile_probe_answer_is_that_hosts_error(lab_inv, tmp_path, reliability, mode):
    """`verify-cache` and `verify-dataset` report mac5 as an error naming it and saying what was wrong
    (nested too deeply / malformed, with the exception's type / more than 64 MiB, stopped), print no
    traceback, still report mac4 from its own answer, and end within 60 s with fab under 512 MiB."""
    inventory = hostile_inventory(lab_inv, tmp_path, mode)
    worst = (0.0, 0.0)
    for task in ("verify-cache", "verify-dataset"):
        code, out, err, seconds, rss = fab_measured(inventory, task)
        assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
        assert code == 1, (code, out[-2000:], err[-2000:])
        hosts = by_host(json.loads(out))
        assert not hosts["mac5"]["ok"] and hosts["mac5"]["verdict"] == "error", hosts["mac5"]
        assert re.search(EXPECT[mode], hosts["mac5"]["detail"]), hosts["mac5"]["detail"]
        assert hosts["mac4"]["verdict"] != "error", hosts["mac4"]  # mac4 judged from its own answer
        assert seconds < 60 and rss < 512, (seconds, rss)
        worst = (max(worst[0], seconds), max(worst[1], rss))
    reliability(seconds=round(worst[0], 1), fab_peak_rss_mib=round(worst[1]))
