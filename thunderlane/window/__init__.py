"""train-window, by concept: the profile's hosts and writer (``writer``), the window lock
(``lock``), preflight (``preflight``), the plan the bash launcher runs (``plan``), the runner,
watchdog and reaping (``runner``), triage (``triage``) and the task itself (``task``)."""
from .lock import lock_dir, lock_holder_of, lock_state
from .plan import plan_window
from .preflight import preflight
from .runner import RunOutcome, describe, finish, parse_event, reap_all
from .task import ALREADY, WindowResult, gate_writer, train_summary, train_window
from .triage import (CRASH, DATA_LINK, DATASET, HANG, INTERRUPTED, NOISY, NOT_COMMITTED, STALLED, SUCCESS,
                     WRITE, classify)
from .writer import WindowError, committed, profile_hosts, run_facts, writer_facts, writer_run_dir

__all__ = ["ALREADY", "CRASH", "DATA_LINK", "DATASET", "HANG", "INTERRUPTED", "NOISY", "NOT_COMMITTED", "STALLED",
           "SUCCESS", "WRITE", "RunOutcome", "WindowError", "WindowResult", "classify", "committed",
           "describe", "finish", "gate_writer", "lock_dir", "lock_holder_of", "lock_state", "parse_event", "plan_window",
           "preflight", "profile_hosts", "reap_all", "run_facts", "train_summary", "train_window", "writer_facts",
           "writer_run_dir"]
