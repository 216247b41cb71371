"""A `fab sync-cache` run split into phases, for the computed explanations (bench/explain.py).
Pure: it reads the run's timestamped stderr lines and its JSON row, nothing else (unit-tested)."""


def first(lines, test):
    return next((t for t, line in lines if test(line)), None)


def last(lines, test):
    return next((t for t, line in reversed(lines) if test(line)), None)


# the launcher's own lines that bound its parts: the one it prints before its first rsync pass
# ("sync: SOURCE -> HOST:REPO (revision R)") and its closing figures ("sync: done: ...")
ORIGIN = " (revision "
DONE = "sync: done:"


def launcher_parts(lines, launcher):
    """The launcher's ``launcher`` seconds split by its own lines (fab shows them, prefixed by the
    host, after its '$ ...' command line): 'launcher setup' (checks, the host's preparation, the
    peer's check and daemon, until its first rsync pass), 'launcher passes' (the rsync passes) and
    'launcher close' (after its closing figures until fab has its exit). None without those lines."""
    start = first(lines, lambda l: l.startswith("$ "))
    origin = first(lines, lambda l: "sync: " in l and ORIGIN in l)
    done = first(lines, lambda l: DONE in l)
    if None in (start, origin, done) or not start <= origin <= done or done - start > launcher:
        return None
    return {"launcher setup": origin - start, "launcher passes": done - origin,
            "launcher close": launcher - (done - start)}


def phases_of(lines, seconds, row, noop_launcher=None, split_launcher=False):
    """A fab sync-cache run split into phases: fab's own (the row's 'phases', when fab times them:
    verify before, launcher, verify after) with fab's start and exit as the rest; else by its
    timestamped stderr lines, until the launcher's command line ('$ ...'), the launcher, after its
    last line. None when neither is there (e.g. nothing to send, and fab does not time its steps).
    With ``noop_launcher`` (the launcher's time with nothing to send, measured apart) the launcher
    is split into that fixed part ('launcher fixed cost') and the transfer; with ``split_launcher``
    by its own lines (:func:`launcher_parts`), when they are there."""
    own = row.get("phases") or {}
    if "launcher" in own:
        phases = {"fab start + exit": max(seconds - sum(own.values()), 0.0), **own}
    else:
        start = first(lines, lambda l: l.startswith("$ "))
        end = last(lines, lambda l: l.strip() != "")
        if start is None or end is None or end < start:
            return {"fab start + exit": max(seconds - sum(own.values()), 0.0), **own} if own else None
        phases = {"fab start + verify before": start, "launcher": end - start,
                  "verify after + exit": max(seconds - end, 0.0)}
    parts = launcher_parts(lines, phases["launcher"]) if split_launcher else None
    if parts:
        return _replace(phases, "launcher", parts)
    if noop_launcher is not None:
        fixed = min(noop_launcher, phases["launcher"])
        phases = _replace(phases, "launcher", {"launcher fixed cost": fixed, "transfer": phases["launcher"] - fixed})
    return phases


def _replace(phases, name, parts):
    """``phases`` with the phase ``name`` replaced, in its place, by ``parts``."""
    i = list(phases).index(name)
    items = list(phases.items())
    items[i:i + 1] = list(parts.items())
    return dict(items)


def median_run(totals, runs):
    """The phases of the run whose total is the median (the lower one of an even count), rounded:
    one real run's split, which adds up to the median time, where per-phase medians need not."""
    if not runs or not all(runs) or len(totals) != len(runs):
        return None
    middle = sorted(range(len(totals)), key=totals.__getitem__)[(len(totals) - 1) // 2]
    return {k: round(v, 3) for k, v in runs[middle].items()}
