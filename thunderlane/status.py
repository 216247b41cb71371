"""status: one row per host: reachable, dataset, cache, lane versions, last committed step, whether
the files that commit names are whole and match (the gate at that step), and whether a window is
running."""
from . import checkpoint
from .remote import HostError
from .report import HostResult, Report
from .verify import judge_caches, verify_dataset
from .window import lock_holder_of, profile_hosts
from .window.preflight import gather

FIGURES = ("dataset", "cache", "python", "mlx", "mlx_lm", "step", "commit", "running")


def status(inv, profile):
    hosts = profile_hosts(inv, profile)
    got = gather(inv, hosts, profile)
    ds = {r.host: r for r in verify_dataset(inv, hosts, got["dataset"]).results}
    cache = {r.host: r for r in judge_caches(got["cache"]).results}
    held, pid, holder = lock_holder_of(inv, profile)
    rows = [HostResult("local", "ok" if ds["local"].ok and cache["local"].ok else "attention",
                       ds["local"].ok and cache["local"].ok, lock_words(held, pid, holder),
                       {"dataset": ds["local"].verdict, "cache": cache["local"].verdict,
                        "running": held == "held" and (holder is None or holder.is_window)})]
    for h in hosts:
        rows.append(_row(h.name, ds[h.name], cache[h.name], got["run"][h.name]))
    return Report(f"status ({profile.name})", tuple(rows))


def lock_words(held, pid, holder):
    """The local row's word on the window lock: who holds it when its note says so."""
    if holder:
        return f"window lock held by {holder.words()}"
    return f"window lock {held} (pid {pid})" if held else ""


def _row(name, ds, cache, run):
    if isinstance(run, HostError):
        return HostResult(name, run.kind, False, run.message, {"dataset": ds.verdict, "cache": cache.verdict})
    v = run.versions
    step = checkpoint.committed_step(run)
    commit = checkpoint.gate(name, run, step) if step != 0 else None  # None: torn, the gate says so
    figures = {"dataset": ds.verdict, "cache": cache.verdict, "python": v.python, "mlx": v.mlx,
               "mlx_lm": v.mlx_lm, "step": step, "commit": commit.verdict if commit else "-",
               "running": bool(run.running)}
    ok = ds.ok and cache.ok and (commit is None or commit.ok or bool(run.running))
    detail = "; ".join(f"{what}: {r.detail}" for what, r in (("dataset", ds), ("cache", cache), ("commit", commit))
                       if r is not None and not r.ok)
    return HostResult(name, "ok" if ok else "attention", ok, detail, figures)
