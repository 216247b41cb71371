"""Running a window: the chunk runner under a no-progress watchdog, its ranks' events streamed one
line per step per host, and afterwards every rank reaped by its recorded PID."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import facts, layout, presession
from ..remote import HostError, ask, on_hosts, open_session
from ..fsutil import take_lock
from ..report import printable
from .lock import lock_dir, note
from .writer import WindowError, profile_hosts, run_query

CALLER_GATES = "chunks: caller gates: "  # the runner's line when it left the last window's check to fab
NOCOMMIT = 76  # the chunk runner's exit when a window ended without committing its end step
EVENT_PREFIX = "LANE "  # a rank's event: this prefix, then one JSON object (onhost/lane_train.py)
EVENT = re.compile(r"(?:^|[^A-Za-z0-9_])LANE (?=\{)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_LINE = 2**20  # a longer line (a rank's or a host's) is read in pieces: what fab holds stays bounded


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
    plans: list = field(default_factory=list)
    caller_gates: bool = False  # the runner left the last window's commit check to fab (it printed CALLER_GATES)


def parse_event(line):
    """``... LANE {"rank": 0, "host": "mac4", "phase": "step", ...}`` -> that dict; None for any
    other line. Whatever precedes the prefix on the line (mlx.launch's, a progress bar) is ignored."""
    text = ANSI.sub("", line)
    matches = list(EVENT.finditer(text))
    if not matches:
        return None
    try:
        event, _ = json.JSONDecoder().raw_decode(text, matches[-1].end())
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def describe(event):
    """One progress line for people, prefixed by host; host text escaped for the terminal."""
    host, phase = event.get("host", "?"), event.get("phase")
    if phase == "step":
        line = (f"[{host}] step {event.get('step')} loss {_num(event.get('loss'))} lr {_num(event.get('lr'))} "
                f"tok/s {_num(event.get('tok_s'))}")
    elif phase == "commit":
        val = event.get("val_loss")
        line = (f"[{host}] committed step {event.get('step')} (adapters {event.get('adapter_sha256')}, "
                f"val loss {'-' if val is None else _num(val)})")
    elif phase == "error":
        line = f"[{host}] ERROR ({event.get('kind')}): {event.get('msg', '')}"
    else:
        rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("host", "phase", "rank"))
        line = f"[{host}] {phase} {rest}".rstrip()
    return printable(line)


def _num(x):
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def run_chunks(inv, profile, target, window, watchdog, log_path, out=sys.stdout, start=None, first_plan=None,
               task="train-window"):
    """Run the chunk runner; stream progress; end it (and every rank) after ``watchdog`` seconds
    without a progress line, or on Ctrl-C. ``start``: the committed step preflight read, handed over
    so the runner need not read it again (each window's plan checks the writer is still there); the
    caller then gates the last window itself (see :func:`runner_exit`). ``first_plan``: the first
    window's plan folder, made by the caller (``plan.plan_first``). ``task``: the fab task running the
    window, named in the window lock's note."""
    argv = ["bash", str(layout.CHUNKS), profile.name, str(target), str(window)]
    env = dict(os.environ, THUNDER_INVENTORY=inv.path, THUNDER_PYTHON=sys.executable, PYTHONUNBUFFERED="1",
               THUNDER_PLAN_ROOT=str(layout.local(inv).plans(profile.run_name)))
    for name in ("THUNDER_START_STEP", "THUNDER_CALLER_GATES", "THUNDER_FIRST_PLAN"):
        env.pop(name, None)
    if start is not None:
        env.update(THUNDER_START_STEP=str(int(start)), THUNDER_CALLER_GATES="1")
    if first_plan is not None:
        env.update(THUNDER_FIRST_PLAN=str(first_plan))
    outcome = RunOutcome(command=shlex.join(argv[1:]), exit_code=-1, seconds=0.0, log=str(log_path))
    t0 = time.monotonic()
    last = [time.monotonic()]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    lock_r, lock_w = os.pipe()
    env["THUNDER_LOCK_FD"] = str(lock_r)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, pass_fds=(lock_r,),
                                 start_new_session=True, cwd=str(layout.LAUNCHERS))
        except BaseException:
            os.close(lock_w)
            raise
        finally:
            os.close(lock_r)
        _hand_lock(inv, profile, p.pid, lock_w, task)
        ahead = _gate_ahead(inv, profile, target)
        reader = threading.Thread(target=_read, args=(p, log, outcome, last, out, ahead), daemon=True)
        reader.start()
        _watch(p, outcome, last, watchdog, out)
        p.wait()
        reader.join(timeout=5)
    outcome.exit_code = p.returncode
    outcome.seconds = time.monotonic() - t0
    return outcome


def _hand_lock(inv, profile, pid, fd, task="train-window"):
    """Take the window lock for the runner ``pid`` (its owner, as if it had taken it itself) and write
    on ``fd`` what ``launcher_helpers take-lock`` prints for it: the runner starts no interpreter.
    Its note names fab's ``task`` and pid beside the runner's."""
    lock = lock_dir(inv, profile)
    try:
        state, owner = take_lock(lock, pid, note(task, pid, fab=os.getpid()))
        line = f"{state} {owner or '-'} {lock}\n"
    except OSError as e:  # the runner reads no lock and exits with its usage code
        line = f"error - \n# {e}\n"
    try:
        os.write(fd, line.encode())
    except OSError:  # the runner is gone already: the lock it never used is stale
        pass
    finally:
        os.close(fd)


def _gate_ahead(inv, profile, target):
    """A rank's event -> None: at the commit of ``target`` (the last), the gate's sessions start
    opening (:mod:`thunderlane.presession`), their handshake overlapping the ranks' teardown."""
    def seen(event):  # runs in the reader thread: it must never raise
        if event.get("phase") == "commit" and event.get("step") == target:
            try:
                presession.prepare(inv, profile_hosts(inv, profile), open_session)
            except (WindowError, RuntimeError):  # no hosts (or no thread) to open: the gate opens its own
                pass
    return seen


def _watch(p, outcome, last, watchdog, out):
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


def _read(p, log, outcome, last, out, seen=lambda event: None):
    for raw in iter(lambda: p.stdout.readline(MAX_LINE), b""):
        line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n").replace("\r", "")
        log.write(line + "\n")
        log.flush()
        event = parse_event(line)
        if event is not None:
            last[0] = time.monotonic()
            outcome.events.append(event)
            out.write(describe(event) + "\n")
            seen(event)
        elif line.startswith(("chunks:", "launch:")):
            last[0] = time.monotonic()
            if line.startswith(CALLER_GATES):
                outcome.caller_gates = True
            elif line.startswith("launch: + "):
                outcome.launches.append(line[len("launch: + "):])
            elif line.startswith("launch: plan in "):
                outcome.plans.append(line[len("launch: plan in "):])
            out.write(printable(line) + "\n")
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


def runner_exit(launch_exit, committed_step, target):
    """The exit the chunk runner would have given had it checked the last window itself: 0 when
    checkpoint.json reached ``target`` (a non-zero launch is then a noisy teardown), else the launch's
    code, or :data:`NOCOMMIT` when the launch ended cleanly without committing."""
    if committed_step == target:
        return 0
    return launch_exit or NOCOMMIT


def finish(inv, profile):
    """After a window, in one ssh session per host: reap every rank still alive (by recorded
    PID), then read the run directory. Returns ({host: Reaped or HostError}, the writer's RunFacts
    or HostError)."""
    def both(h):
        return ask(inv, h, facts.reap(h.runs_root, profile.run_name), run_query(h, profile))
    got = on_hosts(profile_hosts(inv, profile), both)
    reaped = {n: r if isinstance(r, HostError) else r[0] for n, r in got.items()}
    writer = got[profile.writer]
    return reaped, writer if isinstance(writer, HostError) else writer[1]


def reap_all(inv, profile):
    """End every rank of this run still alive on any host, by recorded PID: {host: Reaped}."""
    return finish(inv, profile)[0]
