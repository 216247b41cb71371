"""train-window: preflight every host, run the chunk runner (which runs mlx.launch per window),
watch for progress, reap every rank afterwards, gate on checkpoint.json, classify the outcome."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint, dataset
from .inventory import InventoryError
from .profiles import lock_dir
from .remote import HostError, on_hosts, run_probe
from .report import HostResult, Report, human_bytes
from .verify import cache_args, dataset_args, judge_caches, verify_dataset

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = ROOT / "launchers"
CHUNKS = LAUNCHERS / "run_gemma4_e2b_nko_correction_chunks.sh"
LAUNCH = LAUNCHERS / "launch_gemma4_e2b_nko_correction_thunder.sh"
ENTRY = Path(__file__).resolve().parent / "lane_train.py"
LANE_LINE = re.compile(r"(?:^|[^A-Za-z0-9_])LANE (rank=.*)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class WindowError(RuntimeError):
    pass


def profile_hosts(inv, profile):
    """The profile's hosts from the inventory, rank 0 (the writer) first."""
    try:
        return [inv.host(name) for name in profile.hosts]
    except InventoryError as e:
        raise WindowError(f"profile {profile.name}: {e}") from None


def run_dir(host, profile):
    return os.path.join(host.runs_root, profile.run_name)


def lane_facts(inv, hosts, profile):
    return on_hosts(hosts, lambda h: run_probe(inv, h, ["lane", h.runs_root, profile.run_name]))


def writer_facts(inv, profile):
    writer = profile_hosts(inv, profile)[0]
    facts = lane_facts(inv, [writer], profile)[writer.name]
    if isinstance(facts, HostError):
        raise WindowError(f"writer {facts.host} unreachable: {facts.message}")
    return writer, facts


def committed(inv, profile):
    """The step the writer's checkpoint.json commits (0 if none). Unreadable is an error."""
    writer, facts = writer_facts(inv, profile)
    step = checkpoint.committed_step(facts)
    if step is None:
        raise WindowError(f"{writer.name}: {facts['run_dir']}/checkpoint.json is unreadable: "
                          f"{(facts.get('checkpoint') or {}).get('error')}")
    return step


# --- locks -----------------------------------------------------------------------------------------

def lock_state(inv, profile):
    """(None | 'held' | 'stale', pid) of the window lock."""
    path = lock_dir(inv, profile)
    if not path.is_dir():
        return None, None
    try:
        pid = int((path / "pid").read_text().strip())
    except (OSError, ValueError):
        return "stale", None
    try:
        os.kill(pid, 0)
        return "held", pid
    except ProcessLookupError:
        return "stale", pid
    except PermissionError:
        return "held", pid


# --- preflight -------------------------------------------------------------------------------------

def preflight(inv, profile):
    """Every host of the profile, in parallel: dataset parity, cache complete, same versions and
    model revision, free disk, no window running. A Report whose failures name host and reason,
    and the run facts it read ({host: facts}) so the caller need not ask again."""
    hosts = profile_hosts(inv, profile)
    results = {}
    facts = gather_all(inv, hosts, profile)
    outcome = {"dataset": verify_dataset(inv, hosts, facts["dataset"]),
               "cache": judge_caches(facts["cache"]), "lane": facts["lane"]}
    problems = {h.name: [] for h in hosts}
    for what in ("dataset", "cache"):
        for r in outcome[what].results:
            if not r.ok:
                problems.setdefault(r.host, []).append(f"{what} {r.verdict}: {r.detail}")
    lane = outcome["lane"]
    _lane_problems(inv, profile, hosts, lane, problems)
    for name, items in problems.items():
        facts = lane.get(name)
        figures = {}
        if isinstance(facts, dict):
            v = facts["versions"]
            figures = {"python": v.get("python"), "mlx": v.get("mlx"), "mlx_lm": v.get("mlx-lm"),
                       "free": human_bytes(facts["free_bytes"]), "step": checkpoint.committed_step(facts)}
        results[name] = HostResult(name, "ready" if not items else "refused", not items, "; ".join(items), figures)
    return Report("preflight", tuple(results.values())), {k: v for k, v in lane.items() if isinstance(v, dict)}


def gather_all(inv, hosts, profile):
    """Dataset, cache and run facts of local and every host, one ssh session per host:
    {"dataset": {name: facts}, "cache": {...}, "lane": {...}} (a HostError where one failed)."""
    def ask(h):
        cmds = [dataset_args(h), cache_args(inv, h)] + \
            ([] if h.is_local else [["lane", h.runs_root, profile.run_name]])
        return run_probe(inv, h, ["multi", json.dumps(cmds)])["results"]
    got = on_hosts([inv.local, *hosts], ask)
    out = {"dataset": {}, "cache": {}, "lane": {}}
    for name, res in got.items():
        for i, key in enumerate(("dataset", "cache", "lane")):
            if key == "lane" and name == "local":
                continue
            out[key][name] = res if isinstance(res, HostError) else res[i]
    return out


def _lane_problems(inv, profile, hosts, lane, problems):
    reachable = {}
    for h in hosts:
        f = lane[h.name]
        if isinstance(f, HostError):
            problems[h.name].append(f"{f.kind}: {f.message}")
            continue
        reachable[h.name] = f
        if f["free_bytes"] is not None and f["free_bytes"] < profile.min_free_mb * 2**20:
            problems[h.name].append(f"only {human_bytes(f['free_bytes'])} free under {h.runs_root}, "
                                    f"the profile wants {profile.min_free_mb} MiB")
        alive = [r["pid"] for r in f["ranks"] if r["alive"]]
        if alive:
            problems[h.name].append(f"a window is still running here (rank pids {alive})")
        if checkpoint.committed_step(f) is None:
            problems[h.name].append(f"{f['run_dir']}/checkpoint.json is unreadable")
    _agree(reachable, "versions", problems)
    pythons = {h.name: h.python for h in hosts}
    if len(set(pythons.values())) > 1:
        first = hosts[0]
        for h in hosts[1:]:
            if h.python != first.python:
                problems[h.name].append(f"python {h.python} differs from {first.name}'s {first.python}: "
                                        "mlx.launch takes one --python for every host")
    steps = {n: checkpoint.committed_step(f) for n, f in reachable.items()}
    if len(set(steps.values())) > 1:
        for name, step in steps.items():
            problems[name].append(f"committed step {step} here, ranks disagree ({steps})")
    state, pid = lock_state(inv, profile)
    if state == "held":
        problems.setdefault("local", []).append(f"another window holds the lock {lock_dir(inv, profile)} (pid {pid})")


def _agree(reachable, key, problems):
    """Python, mlx and mlx-lm versions must be the same everywhere: name both sides of a mismatch."""
    names = list(reachable)
    if not names:
        return
    ref = names[0]
    for name in names[1:]:
        for dist in ("python", "mlx", "mlx-lm"):
            a, b = reachable[ref][key].get(dist), reachable[name][key].get(dist)
            if a != b:
                problems[name].append(f"{dist} {b} here but {a} on {ref}")
    for name in names:
        for dist in ("mlx", "mlx-lm"):
            if reachable[name][key].get(dist) is None:
                problems[name].append(f"{dist} is not installed for this host's lane python")


# --- the plan of one window (written for the bash launcher) ---------------------------------------

def new_run_id(profile):
    return f"{profile.run_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def plan_window(inv, profile, to_step, target, out_dir):
    """Write everything one window needs into ``out_dir``: the JSON hostfile (ssh names and data
    IPs), the spec every rank reads, the ssh config mlx.launch's ssh uses (host keys pinned), the
    entry's source, the interpreter. Returns the spec."""
    hosts = profile_hosts(inv, profile)
    writer, wfacts = writer_facts(inv, profile)
    data = run_probe(inv, inv.local, ["dataset", inv.local.dataset_root])
    cache = run_probe(inv, inv.local, ["cache", inv.repo_id, inv.local.hf_cache or "-"])
    ckpt = (wfacts.get("checkpoint") or {}).get("data") if checkpoint.committed_step(wfacts) else None
    spec = {
        "fault": os.environ.get("THUNDER_FAULT") or None,  # fault injection, for the reliability suite
        "profile": profile.name, "run_id": ckpt["run_id"] if ckpt else new_run_id(profile),
        "target": target, "to_step": to_step, "model": inv.repo_id, "revision": cache.get("ref"),
        "dataset_digest": dataset.digest(data) if data.get("exists") else None,
        "config": profile.config,
        "ranks": [{"host": h.name, "run_dir": run_dir(h, profile), "hf_cache": h.hf_cache,
                   "data": profile.config.get("data") or h.dataset_root} for h in hosts],
    }
    out = Path(out_dir)
    (out / "bin").mkdir(parents=True, exist_ok=True)
    hostfile = [{"ssh": h.ssh_name, "ips": [h.data_ip]} for h in hosts]
    _write(out / "hostfile.json", json.dumps(hostfile, indent=2) + "\n")
    _write(out / "ssh_config", ssh_config(inv, hosts))
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    _write(out / "bin" / "ssh", SSH_WRAPPER.format(ssh=shlex.quote(ssh), config=shlex.quote(str(out / "ssh_config"))),
           0o755)
    _write(out / "entry.py", ENTRY.read_text())
    _write(out / "python", hosts[0].python + "\n")
    _write(out / "mlx_launch", str(Path(sys.executable).parent / "mlx.launch") + "\n")
    spec["command"] = shlex.join([str(LAUNCH), profile.name, str(to_step), str(target)])
    _write(out / "spec.json", json.dumps(spec, sort_keys=True) + "\n")
    return spec


# mlx.launch runs `ssh -o LogLevel=QUIET host ...`, which would hide "Host key verification failed":
# the wrapper keeps errors visible and adds the window's config (endpoints, key, pinned host keys).
SSH_WRAPPER = """#!/bin/sh
for a in "$@"; do
  shift
  [ "$a" = "LogLevel=QUIET" ] && a="LogLevel=ERROR"
  set -- "$@" "$a"
done
exec {ssh} -F {config} "$@"
"""


def ssh_config(inv, hosts):
    """Host blocks for every host's ssh name, so mlx.launch's plain ``ssh mac4`` uses the same
    endpoint, key and pinned known_hosts as Fabric and rsync."""
    s = inv.ssh
    blocks = []
    for h in hosts:
        lines = [f"Host {h.ssh_name}", f"  HostName {h.hostname}", f"  Port {h.port}", f"  User {h.user}",
                 "  BatchMode yes", "  StrictHostKeyChecking yes", f"  UserKnownHostsFile \"{s.known_hosts}\"",
                 f"  ConnectTimeout {s.connect_timeout}", "  ServerAliveInterval 10", "  ServerAliveCountMax 3",
                 "  CheckHostIP no"]
        if s.identity:
            lines += [f"  IdentityFile \"{s.identity}\"", "  IdentitiesOnly yes"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _write(path, text, mode=0o644):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --- running the chunk runner under a watchdog ----------------------------------------------------

@dataclass
class RunOutcome:
    command: str
    exit_code: int
    seconds: float
    watchdog_fired: bool = False
    interrupted: bool = False
    events: list = field(default_factory=list)
    log: str = ""
    tail: list = field(default_factory=list)
    launches: list = field(default_factory=list)


def parse_lane(line):
    """``LANE rank=0 host=mac4 phase=step step=3`` -> dict, or None for any other line."""
    m = LANE_LINE.search(ANSI.sub("", line).strip())
    if not m:
        return None
    out = {}
    for part in m.group(1).split(" "):
        k, _, v = part.partition("=")
        if k and k not in out:
            out[k] = v
    return out


def describe(event):
    """One progress line for people, prefixed by host."""
    host, phase = event.get("host", "?"), event.get("phase")
    if phase == "step":
        return f"[{host}] step {event.get('step')} loss {event.get('loss')} lr {event.get('lr')} tok/s {event.get('tok_s')}"
    if phase == "commit":
        return f"[{host}] committed step {event.get('step')} (adapters {event.get('adapter_sha256')}, val loss {event.get('val_loss')})"
    if phase == "error":
        return f"[{host}] ERROR ({event.get('kind')}): {event.get('msg', '').replace('_', ' ')}"
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("host", "phase", "rank"))
    return f"[{host}] {phase} {rest}".rstrip()


def run_chunks(inv, profile, target, window, watchdog, log_path, out=sys.stdout):
    """Run the chunk runner; stream progress; end it (and every rank) after ``watchdog`` seconds
    without a progress line, or on Ctrl-C."""
    argv = ["bash", str(CHUNKS), profile.name, str(target), str(window)]
    plans = Path(inv.local.runs_root) / ".plans" / profile.run_name
    env = dict(os.environ, THUNDER_INVENTORY=inv.path, THUNDER_PYTHON=sys.executable, PYTHONUNBUFFERED="1",
               THUNDER_PLAN_ROOT=str(plans))
    outcome = RunOutcome(command=shlex.join(argv[1:]), exit_code=-1, seconds=0.0, log=str(log_path))
    t0 = time.monotonic()
    last = [time.monotonic()]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True, cwd=str(LAUNCHERS))
        reader = threading.Thread(target=_read, args=(p, log, outcome, last, out), daemon=True)
        reader.start()
        try:
            while p.poll() is None:
                if time.monotonic() - last[0] > watchdog:
                    outcome.watchdog_fired = True
                    out.write(f"watchdog: no progress for {watchdog}s: ending the window\n")
                    _end_group(p)
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            outcome.interrupted = True
            out.write("\ninterrupted: ending the window on every host\n")
            _end_group(p)
        p.wait()
        reader.join(timeout=5)
    outcome.exit_code = p.returncode
    outcome.seconds = time.monotonic() - t0
    return outcome


def _read(p, log, outcome, last, out):
    for raw in iter(p.stdout.readline, b""):
        line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n").replace("\r", "")
        log.write(line + "\n")
        log.flush()
        event = parse_lane(line)
        if event is not None:
            last[0] = time.monotonic()
            outcome.events.append(event)
            out.write(describe(event) + "\n")
        elif line.startswith(("chunks:", "launch:")):
            last[0] = time.monotonic()
            if line.startswith("launch: + "):
                outcome.launches.append(line[len("launch: + "):])
            out.write(line + "\n")
        elif line.strip():
            outcome.tail = (outcome.tail + [line])[-30:]
        out.flush()


def _end_group(p, grace=5.0):
    """TERM the runner's whole process group (bash, mlx.launch, its ssh sessions), then KILL."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)


def reap_all(inv, profile):
    """End every rank of this run still alive on any host, by recorded PID: {host: report}."""
    return finish(inv, profile)[0]


def finish(inv, profile):
    """After a window, in one ssh session per host: reap every rank still alive (by recorded
    PID), then read the run directory. Returns ({host: reap report}, the writer's run facts)."""
    hosts = profile_hosts(inv, profile)
    got = on_hosts(hosts, lambda h: run_probe(inv, h, ["multi", json.dumps(
        [["reap", h.runs_root, profile.run_name], ["lane", h.runs_root, profile.run_name]])])["results"])
    reaped = {n: r if isinstance(r, HostError) else r[0] for n, r in got.items()}
    writer = got[profile.writer]
    return reaped, writer if isinstance(writer, HostError) else writer[1]


# --- classification (the handoff's triage) --------------------------------------------------------

STALLED = "stalled-before-training"
DATASET = "rank-cannot-see-dataset"
CRASH = "runtime-crash"
HANG = "distributed-hang"
WRITE = "path-or-write-failure"
SUCCESS = "success"
NOISY = "success-noisy-teardown"
INTERRUPTED = "interrupted"
NOT_COMMITTED = "not-committed"


def classify(outcome, gate_ok):
    """(verdict, explanation) from what the window printed, how it ended and the gate."""
    errors = [e for e in outcome.events if e.get("phase") == "error"]
    trained = any(e.get("phase") in ("step", "commit") for e in outcome.events)
    loaded = any(e.get("phase") == "model-loaded" for e in outcome.events)
    if gate_ok:
        if outcome.exit_code == 0 and not errors:
            return SUCCESS, "checkpoint.json reached the target with whole, matching adapter files"
        return NOISY, (f"checkpoint committed, but the launch ended with exit {outcome.exit_code}"
                       f"{': ' + _err(errors[0]) if errors else ''}; secondary unless artifacts are missing")
    if outcome.interrupted:
        return INTERRUPTED, "stopped by Ctrl-C; every rank was ended and the last commit stands"
    kinds = {e.get("kind") for e in errors}
    if "dataset" in kinds:
        return DATASET, _err(next(e for e in errors if e.get("kind") == "dataset"))
    if "cache" in kinds:
        return STALLED, "cache or model materialization: " + _err(next(e for e in errors if e.get("kind") == "cache"))
    if "write" in kinds:
        return WRITE, _err(next(e for e in errors if e.get("kind") == "write"))
    if outcome.watchdog_fired:
        if not loaded:
            return STALLED, "no training log before the watchdog: cache or model materialization"
        return HANG, f"no progress for the watchdog's time after {'training' if trained else 'loading'}; a rank or the ring is stuck"
    if errors:
        return CRASH, _err(errors[0])
    lost = _silent_ranks(outcome.events)
    if lost:
        return CRASH, (f"the rank on {', '.join(lost)} ended without reporting (killed or crashed); "
                       f"the chunk runner exited {outcome.exit_code}")
    if outcome.exit_code != 0:
        if not loaded:
            return STALLED, f"the launch ended (exit {outcome.exit_code}) before any model loaded"
        return CRASH, f"the window ended with exit {outcome.exit_code} before committing its end step"
    return NOT_COMMITTED, "the window ended cleanly but checkpoint.json does not show the target"


def _silent_ranks(events):
    """Hosts whose rank started its last window but never said it was done or why it failed."""
    state = {}
    for e in events:
        phase = e.get("phase")
        if phase == "start":
            state[e.get("host")] = "running"
        elif phase in ("done", "error"):
            state[e.get("host")] = phase
    return sorted(h for h, s in state.items() if s == "running")


def _err(event):
    return f"{event.get('host', '?')}: {event.get('msg', '').replace('_', ' ')}"


# --- the task ----------------------------------------------------------------------------------------

@dataclass
class WindowResult:
    profile: str
    target: int
    verdict: str
    explanation: str
    preflight: Report
    gate: HostResult = None
    outcome: RunOutcome = None
    reaped: dict = None
    trained: bool = True
    start_step: int = 0

    @property
    def ok(self):
        return self.verdict in (SUCCESS, NOISY, "already-at-target")


def gate_writer(inv, profile, target):
    writer, facts = writer_facts(inv, profile)
    return checkpoint.gate(writer.name, facts, target)


def train_window(inv, profile, target, window, watchdog=None, skip_preflight=False, out=sys.stdout):
    """The whole task: preflight, train (unless at the target), reap, gate, classify."""
    pre, pre_lane = (Report("preflight", ()), {}) if skip_preflight else preflight(inv, profile)
    if not pre.ok:
        return WindowResult(profile.name, target, "refused", "preflight failed on "
                            + ", ".join(pre.failed), pre)
    start = checkpoint.committed_step(pre_lane[profile.writer]) if profile.writer in pre_lane else None
    start = committed(inv, profile) if start is None else start
    if start >= target:
        g = gate_writer(inv, profile, target)
        if g.ok:
            return WindowResult(profile.name, target, "already-at-target", f"checkpoint.json already at "
                                f"step {start}: nothing to train", pre, gate=g, trained=False, start_step=start)
        return WindowResult(profile.name, target, "gate-failed", g.detail, pre, gate=g, trained=False,
                            start_step=start)
    log = Path(inv.local.runs_root) / ".logs" / f"{profile.run_name}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    outcome = run_chunks(inv, profile, target, window, watchdog or profile.watchdog_seconds, log, out)
    reaped, wfacts = finish(inv, profile)
    g = checkpoint.gate(profile.writer, wfacts, target) if not isinstance(wfacts, HostError) else \
        HostResult(profile.writer, wfacts.kind, False, wfacts.message)
    verdict, why = classify(outcome, g.ok)
    return WindowResult(profile.name, target, verdict, why, pre, gate=g, outcome=outcome,
                        reaped=reaped, start_step=start)
