"""Shared helpers for the benchmarks (issue 5): a bench lab in its own folder, on its own loopback
/24 and ring port (so it never touches `.lab/` or the tests' 127.77.0.x and port 32323), fab runs
with timing, medians and ratios, host cache states, profiles, and peak RSS of a fab process.

Every script prints one JSON line: {"script", "params", "figures": [...], "notes": [...]}, where a
figure is {"id", "name", "goal", "op", "limit", "value", "ok", "runs", "unit", "detail"} and, when
measured, "phases", "baseline_phases", "work" and "facts" (see figure() and bench/explain.py).
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["THUNDER_LAB_NET"] = os.environ.get("THUNDER_BENCH_NET", "127.78.0")
os.environ["THUNDER_RING_PORT"] = os.environ.get("THUNDER_BENCH_RING_PORT", "33400")

import yaml  # noqa: E402

from thunderlane import inventory, lab as labmod, layout  # noqa: E402
from thunderlane.lab import kit  # noqa: E402

# the project's venv; else the interpreter running this (a git worktree has no .venv of its own)
PY = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv").is_dir() else Path(sys.executable)
FAB = PY.parent / "fab"
BENCH_ROOT = Path(os.environ.get("THUNDER_BENCH_LAB", "/tmp/thunder-bench-lab"))
REPO = kit.REPO_FOLDER
BYTE_HOSTS = ["mac4", "mac5", "mac6", "mac7"]   # the byte-bound lab (model --model-mb)
TRAIN_HOSTS = ["mac4", "mac5"]                   # the training lab (model --train-model-mb)
DEFAULT_MODEL_MB = 1000.0
DEFAULT_TRAIN_MODEL_MB = 2.0


def log(*parts):
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def parser(doc, runs=3, train=False):
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs per measurement (default {runs})")
    if train:
        p.add_argument("--train-model-mb", type=float, default=DEFAULT_TRAIN_MODEL_MB,
                       help="model size for training figures (compute-bound: keep it small)")
    else:
        p.add_argument("--model-mb", type=float, default=DEFAULT_MODEL_MB,
                       help="model size in MB for the byte-bound figures (default about 1 GB)")
    return p


# --- the lab ----------------------------------------------------------------------------------

@dataclass
class Lab:
    dir: Path
    hosts: list
    model_mb: float

    @property
    def inventory(self):
        return self.dir / "hosts.yaml"

    @property
    def profiles(self):
        return self.dir / "profiles"

    def env(self, inventory_path=None, **extra):
        return dict(os.environ, THUNDER_INVENTORY=str(inventory_path or self.inventory),
                    THUNDER_PROFILES=str(self.profiles), **extra)

    def inv(self, path=None):
        return inventory.load(str(path or self.inventory))

    def cache(self, host):
        return kit.host_cache(self.dir, host)

    def repo(self, host):
        return kit.host_repo(self.dir, host)

    def shell_env(self, inventory_path=None):
        """The environment part of a command line, for the table."""
        return (f"THUNDER_INVENTORY={inventory_path or self.inventory} THUNDER_PROFILES={self.profiles} "
                f"THUNDER_RING_PORT={os.environ['THUNDER_RING_PORT']}")


@contextmanager
def lab_session(kind, hosts, model_mb, **up_options):
    """Start (or keep) the bench lab ``kind`` (its own folder under $THUNDER_BENCH_LAB); always stop
    its sshd processes at the end. Fixtures are seeded once per folder and size (lab.up's marker);
    each script then puts the host caches in the state it needs. ``up_options`` go to lab.up (e.g.
    the namespaced lab's net and link rates)."""
    d = BENCH_ROOT / f"{kind}-{model_mb:g}mb"
    t0 = time.monotonic()
    try:
        # classic everywhere: the scripts copy local's repo to set a host's state; the "(shared)"
        # rows make their own shared-layout copies (bench/layouts.py)
        labmod.up(hosts, lab=d, model_mb=model_mb, layout="classic", **up_options)
        log(f"lab {d} up ({', '.join(hosts)}, {model_mb:g} MB model) in {time.monotonic() - t0:.1f}s")
        lab = Lab(d, list(hosts), model_mb)
        lab.profiles.mkdir(exist_ok=True)
        yield lab
    finally:
        labmod.down(lab=d)


def person_ssh_command(inv, host):
    """The ssh a person types for a by-hand baseline (``rsync -e``): the lane's connection options
    (endpoint, key, pinned host keys, no prompts) with OpenSSH's own choice of algorithms, i.e. the
    lane's command without its ``Ciphers`` (sshopts.CIPHERS, a speed choice of the lane's own)."""
    from thunderlane import sshopts
    argv = shlex.split(sshopts.ssh_command(inv, host))
    i = argv.index(f"Ciphers={inv.ssh.ciphers}")
    return shlex.join(argv[:i - 1] + argv[i + 1:])


def set_partial(lab, host):
    """The handoff's cold host: configs and tokenizer, no shards, an .incomplete blob, a stale lock.
    Dirty pages are written out before the timed run that follows (os.sync), so that no run pays
    for the writeback of the one before it."""
    cache = lab.cache(host)
    shutil.rmtree(cache, ignore_errors=True)
    labmod.seed_partial(lab.repo("local"), cache)
    os.sync()


def set_complete(lab, host):
    """A complete copy of local's repo (mtimes kept, as rsync -t leaves it), no locks."""
    cache = lab.cache(host)
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    shutil.copytree(lab.repo("local"), cache / REPO, symlinks=True)
    shutil.copystat(lab.repo("local"), cache / REPO)


def write_inventory(lab, name, change):
    """A variant of the lab's inventory: ``change(data)`` edits the parsed YAML; returns its path."""
    data = yaml.safe_load(lab.inventory.read_text())
    change(data)
    path = lab.dir / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_profile(lab, name, run_name, hosts=None, **config):
    """launchers/profiles/synthetic_mechanics.yaml under another name and run name."""
    lane = {"min_free_mb": 64, **({"hosts": list(hosts)} if hosts else {})}
    return kit.write_profile(lab.profiles, name, run_name, lane=lane, **config)


def clean_run(lab, run_name):
    """Remove every trace of a run: each host's run directory, the local mirror, staging and lock."""
    where = layout.Local(lab.dir / "local" / labmod.RUNS_REL)
    for host in lab.hosts:
        shutil.rmtree(lab.dir / host / labmod.RUNS_REL / run_name, ignore_errors=True)
    for path in (where.mirror(run_name), where.staging(run_name), where.lock(run_name), where.plans(run_name)):
        shutil.rmtree(path, ignore_errors=True)


# --- running and timing -----------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    code: int
    data: object
    stdout: str
    stderr: str


def run(argv, env=None, cwd=ROOT, check=False):
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if check and p.returncode:
        raise RuntimeError(f"{shlex.join(map(str, argv))} exited {p.returncode}: {p.stderr[-2000:]}")
    return Run(seconds, p.returncode, None, p.stdout, p.stderr)


def fab(lab, *args, inventory_path=None, check=False):
    """``.venv/bin/fab ARGS --json`` against the lab; the JSON it prints is parsed into ``data``."""
    r = run([FAB, *args, "--json"], env=lab.env(inventory_path), check=check)
    try:
        r.data = json.loads(r.stdout)
    except ValueError:
        r.data = None
    return r


def fab_command(lab, *args, inventory_path=None):
    return f"{lab.shell_env(inventory_path)} .venv/bin/fab {' '.join(args)} --json"


PEAK_WRAPPER = """
import atexit, json, os, sys
def _report():
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    with open(os.environ["BENCH_PEAK_FILE"], "w") as f:
        json.dump({"self_kb": int(status["VmHWM"].split()[0]),
                   "mlx_loaded": sorted(m for m in sys.modules if m == "mlx" or m.startswith(("mlx.", "mlx_lm")))[:5]}, f)
atexit.register(_report)
if os.environ.get("BENCH_LAB_DIR"):  # lab-up/lab-down/status on the bench lab, never on .lab/
    import functools, pathlib
    from thunderlane import lab as _lab
    for _name in ("up", "down", "status"):
        setattr(_lab, _name, functools.partial(getattr(_lab, _name), lab=pathlib.Path(os.environ["BENCH_LAB_DIR"])))
sys.argv = ["fab", *sys.argv[1:]]
from fabric.main import program
program.run()
"""


def fab_peak(lab, *args, inventory_path=None, lab_dir=None):
    """Run a fab task in-process under a wrapper that records, at exit, the fab process's own peak
    RSS (VmHWM of /proc/self/status: this process's memory only, not its children's, and not the
    parent's high-water mark that getrusage's ru_maxrss inherits across fork+exec) and whether
    mlx was imported.
    ``args`` are fab's, as given (add --json yourself); ``lab_dir`` points the lab tasks (lab-up,
    lab-down) at a bench lab folder."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        env = lab.env(inventory_path, BENCH_PEAK_FILE=out, **({"BENCH_LAB_DIR": str(lab_dir)} if lab_dir else {}))
        r = run([PY, "-c", PEAK_WRAPPER, *args], env=env)
        peak = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    return r, peak


def median(xs):
    return statistics.median(xs)


def figure(fid, name, value, op, limit, goal=None, runs=None, unit="ratio", detail="",
           phases=None, baseline_phases=None, work=None, facts=None):
    """One row of the table. The optional machine-readable parts feed the computed explanation
    (bench/explain.py): ``phases`` {phase: seconds} of the measured side (medians, e.g. from
    :func:`phase_medians`), ``baseline_phases`` the same for the side it is compared with (shared
    phases under the same name), ``work`` the phase names that are the transfer or computation itself
    (the rest is fixed cost), ``facts`` other measured facts (e.g. link rates)."""
    ok = None if value is None else (value <= limit if op == "<=" else value >= limit if op == ">=" else value == limit)
    f = {"id": fid, "name": name, "goal": goal or f"{op} {limit:g}", "op": op, "limit": limit,
         "value": value, "ok": ok, "runs": runs, "unit": unit, "detail": detail}
    extra = {"phases": phases, "baseline_phases": baseline_phases, "work": work, "facts": facts}
    f.update({k: (list(v) if k == "work" else v) for k, v in extra.items() if v})
    return f


def phase_medians(per_run):
    """{phase: [seconds per run]} -> {phase: median seconds}, rounded to the millisecond."""
    return {k: round(statistics.median(v), 3) for k, v in per_run.items() if v}


def emit(script, params, figures, notes=()):
    print(json.dumps({"script": script, "params": params, "figures": figures, "notes": list(notes)}),
          flush=True)


def rounded(xs, n=3):
    return [round(x, n) for x in xs]


# --- training ----------------------------------------------------------------------------------

ANSI = __import__("re").compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def timed_lines(argv, env, cwd=ROOT, merge=False):
    """Run ``argv``, timestamping each line it prints (stderr, or both streams with ``merge``):
    (seconds, exit code, [(t, line)], stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, text=True, errors="replace",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    stream = p.stdout if merge else p.stderr
    lines = [(time.perf_counter() - t0, ANSI.sub("", raw).replace("\r", "").rstrip("\n")) for raw in stream]
    out = "" if merge else p.stdout.read()
    code = p.wait()
    return time.perf_counter() - t0, code, lines, out


def train_window(lab, profile, target=10, window=10):
    """``fab train-window`` with its progress lines timestamped; raises unless it succeeded."""
    seconds, code, lines, out = timed_lines(
        [FAB, "train-window", "--profile", profile, "--target", target, "--window", window, "--json"], lab.env())
    data = json.loads(out) if out.strip().startswith("{") else None
    if code or not data or not data["ok"]:
        raise RuntimeError(f"train-window {profile} failed ({code}): " + "\n".join(l for _, l in lines[-30:]))
    return seconds, lines, data


def first(lines, test, default=None):
    return next((t for t, line in lines if test(line)), default)


def last(lines, test, default=None):
    return next((t for t, line in reversed(lines) if test(line)), default)


def adapters(path):
    """{name: float64 numpy array} of a safetensors adapter file."""
    import mlx.core as mx
    import numpy as np
    return {k: np.asarray(v.astype(mx.float32)).astype("float64") for k, v in mx.load(str(path)).items()}
