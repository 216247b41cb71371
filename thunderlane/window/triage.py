"""Triage: the handoff's failure classes, from what a window printed, how it ended and the gate."""
import re

STALLED = "stalled-before-training"
DATASET = "rank-cannot-see-dataset"
CRASH = "runtime-crash"
HANG = "distributed-hang"
WRITE = "path-or-write-failure"
SUCCESS = "success"
NOISY = "success-noisy-teardown"
INTERRUPTED = "interrupted"
NOT_COMMITTED = "not-committed"
DATA_LINK = "data-link"  # preflight: a pair of hosts cannot reach each other's ring port (datapath.py)
REFUSED = "refused"
# mlx's ring backend (libmlx) when it cannot form the ring: a data_ip that is not the host's, a port
# taken, a peer it cannot reach ("Couldn't bind socket (error: 99)", "Couldn't connect ...")
RING_SOCKET = re.compile(r"\[ring\] Couldn't (bind socket|listen|connect)")
PEER_LOST = "connection to a peer was lost"  # mlx's ring backend, on the ranks a vanished rank leaves


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
    link = next((e for e in errors if RING_SOCKET.search(e.get("msg", ""))), None)
    if link:
        return DATA_LINK, f"the ring could not be formed: {_err(link)} (preflight checks every pair's data path)"
    if outcome.watchdog_fired:
        if not loaded:
            return STALLED, "no training log before the watchdog: cache or model materialization"
        return HANG, f"no progress for the watchdog's time after {'training' if trained else 'loading'}; a rank or the ring is stuck"
    lost = _silent_ranks(outcome.events)
    if errors and not (lost and all(PEER_LOST in e.get("msg", "") for e in errors)):
        return CRASH, _err(errors[0])
    if lost:  # a rank that vanished is the cause; the others' "peer was lost" is its consequence
        return CRASH, (f"the rank on {', '.join(lost)} ended without reporting (killed or crashed); "
                       f"the chunk runner exited {outcome.exit_code}")
    if outcome.exit_code != 0:
        if not loaded:
            return STALLED, f"the launch ended (exit {outcome.exit_code}) before any model loaded"
        return CRASH, f"the window ended with exit {outcome.exit_code} before committing its end step"
    return NOT_COMMITTED, "the window ended cleanly but checkpoint.json does not show the target"


def refusal(pre):
    """The window's verdict when preflight refused: ``data-link`` if a link between hosts is broken
    (the ring would hang, not fail), else ``refused``."""
    return DATA_LINK if any(r.verdict == DATA_LINK for r in pre.results) else REFUSED


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
    return f"{event.get('host', '?')}: {event.get('msg', '')}"
