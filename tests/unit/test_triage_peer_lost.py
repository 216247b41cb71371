"""A rank that vanishes (its host went down) is the crash's cause, not the peer that then lost it."""
from thunderlane.window import RunOutcome, classify

EVENTS = [{"host": h, "phase": p} for h in ("mac4", "mac5") for p in ("start", "model-loaded")]
LOST = {"host": "mac4", "phase": "error", "kind": "runtime",
        "msg": "RuntimeError: [ring] connection to a peer was lost"}


def outcome(events):
    return RunOutcome(command="x", exit_code=1, seconds=1.0, watchdog_fired=False, interrupted=False,
                      events=events)


def test_the_vanished_rank_is_named_not_the_peer_that_lost_it():
    verdict, why = classify(outcome(EVENTS + [LOST]), False)
    assert verdict == "runtime-crash" and why.startswith("the rank on mac5 ended without reporting"), why


def test_a_real_error_is_still_named_first():
    boom = {**LOST, "msg": "ValueError: boom"}
    verdict, why = classify(outcome(EVENTS + [boom]), False)
    assert verdict == "runtime-crash" and why == "mac4: ValueError: boom"
