"""A `fab sync-cache` run split into phases, for the computed explanations (bench/explain.py).
Pure: it reads the run's timestamped stderr lines and its JSON row, nothing else (unit-tested)."""


def first(lines, test):
    return next((t for t, line in lines if test(line)), None)


def last(lines, test):
    return next((t for t, line in reversed(lines) if test(line)), None)


def phases_of(lines, seconds, row, noop_launcher=None):
    """A fab sync-cache run split into phases: fab's own (the row's 'phases', when fab times them:
    verify before, launcher, verify after) with fab's start and exit as the rest; else by its
    timestamped stderr lines, until the launcher's command line ('$ ...'), the launcher, after its
    last line. None when neither is there (e.g. nothing to send, and fab does not time its steps).
    With ``noop_launcher`` (the launcher's time with nothing to send, measured apart) the launcher
    is split into that fixed part ('launcher fixed cost') and the transfer."""
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
    if noop_launcher is not None:
        fixed = min(noop_launcher, phases["launcher"])
        i = list(phases).index("launcher")
        items = list(phases.items())
        items[i:i + 1] = [("launcher fixed cost", fixed), ("transfer", phases["launcher"] - fixed)]
        phases = dict(items)
    return phases


def median_run(totals, runs):
    """The phases of the run whose total is the median (the lower one of an even count), rounded:
    one real run's split, which adds up to the median time, where per-phase medians need not."""
    if not runs or not all(runs) or len(totals) != len(runs):
        return None
    middle = sorted(range(len(totals)), key=totals.__getitem__)[(len(totals) - 1) // 2]
    return {k: round(v, 3) for k, v in runs[middle].items()}
