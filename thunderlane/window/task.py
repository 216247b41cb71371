"""train-window: preflight, train (unless already at the target), reap, gate, classify."""
import sys
import time
from dataclasses import dataclass

from .. import checkpoint, layout, presession
from ..remote import HostError
from ..report import HostResult, Report
from .lock import lock_holder_of
from .plan import plan_first
from .preflight import preflight
from .runner import RunOutcome, finish, run_chunks, runner_exit
from .triage import NOISY, SUCCESS, classify, refusal
from .writer import committed, writer_facts

ALREADY = "already-at-target"
LOCKED = "locked"
EX_LOCKED = 75  # the chunk runner's exit when another window of the run holds the lock


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
        return self.verdict in (SUCCESS, NOISY, ALREADY)


def gate_writer(inv, profile, target):
    writer, got = writer_facts(inv, profile)
    return checkpoint.gate(writer.name, got, target)


def train_window(inv, profile, target, window, watchdog=None, skip_preflight=False, out=sys.stdout,
                 task="train-window"):
    """The whole task: preflight, train (unless at the target), reap, gate, classify. ``task``: the
    fab task running it (``handoff`` runs one), as the window lock's note names it."""
    pre, runs, local = (Report("preflight", ()), {}, None) if skip_preflight else preflight(inv, profile)
    if not pre.ok:
        return WindowResult(profile.name, target, refusal(pre), "preflight failed on " + ", ".join(pre.failed), pre)
    start = checkpoint.committed_step(runs[profile.writer]) if profile.writer in runs else None
    start = committed(inv, profile) if start is None else start
    if start >= target:
        return _at_target(inv, profile, target, start, pre)
    log = layout.local(inv).log(profile.run_name, time.strftime("%Y%m%dT%H%M%S"))
    handed = start if profile.writer in runs else None  # read by this preflight: the runner need not
    first = plan_first(inv, profile, start, target, window, (runs[profile.writer], *local)) \
        if handed is not None and local else None
    try:
        outcome = run_chunks(inv, profile, target, window, watchdog or profile.watchdog_seconds, log, out, handed,
                             first, task)
        if outcome.exit_code == EX_LOCKED and not outcome.events:  # the lock is another window's: hands off
            return WindowResult(profile.name, target, LOCKED, _locked_why(inv, profile), pre, outcome=outcome,
                                start_step=start)
        reaped, wfacts = finish(inv, profile)  # over the sessions the last commit opened (runner._gate_ahead)
    finally:
        presession.discard()
    if outcome.caller_gates:  # the runner left the last window's commit check to this gate
        step = None if isinstance(wfacts, HostError) else checkpoint.committed_step(wfacts)
        outcome.exit_code = runner_exit(outcome.exit_code, step, target)
    g = checkpoint.gate(profile.writer, wfacts, target) if not isinstance(wfacts, HostError) else \
        HostResult(profile.writer, wfacts.kind, False, wfacts.message)
    verdict, why = classify(outcome, g.ok)
    return WindowResult(profile.name, target, verdict, why, pre, gate=g, outcome=outcome,
                        reaped=reaped, start_step=start)


def _locked_why(inv, profile):
    holder = lock_holder_of(inv, profile)[2]  # gone meanwhile: said as it always was
    who = f"{holder.words()} holds the window lock" if holder else "another window of this run holds the lock"
    return who + "; this one started nothing and ended nothing"


def train_summary(result):
    """A :class:`WindowResult` as the data ``fab train-window --json`` prints and handoff's report keeps."""
    g, o = result.gate, result.outcome
    return {"verdict": result.verdict, "explanation": result.explanation, "ok": result.ok,
            "gate_ok": bool(g and g.ok), "gate": g.to_dict() if g else None,
            "start_step": result.start_step, "trained": result.trained,
            "command": o.command if o else None,
            "launches": o.launches if o else [], "plans": o.plans if o else [], "log": o.log if o else None,
            "seconds": round(o.seconds, 2) if o else 0,
            "preflight": [r.to_dict() for r in result.preflight.results]}


def _at_target(inv, profile, target, start, pre):
    g = gate_writer(inv, profile, target)
    if g.ok:
        return WindowResult(profile.name, target, ALREADY, f"checkpoint.json already at step {start}: "
                            "nothing to train", pre, gate=g, trained=False, start_step=start)
    return WindowResult(profile.name, target, "gate-failed", g.detail, pre, gate=g, trained=False,
                        start_step=start)
