"""status: one row per host: reachable, dataset, cache, lane versions, last committed step, and
whether a window is running."""
from . import checkpoint
from .remote import HostError
from .report import HostResult, Report
from .verify import judge_caches, verify_dataset
from .window import gather_all, lock_state, profile_hosts

FIGURES = ("dataset", "cache", "python", "mlx", "mlx_lm", "step", "running")


def status(inv, profile):
    hosts = profile_hosts(inv, profile)
    got = gather_all(inv, hosts, profile)
    ds = {r.host: r for r in verify_dataset(inv, hosts, got["dataset"]).results}
    cache = {r.host: r for r in judge_caches(got["cache"]).results}
    held, pid = lock_state(inv, profile)
    rows = [HostResult("local", "ok" if ds["local"].ok and cache["local"].ok else "attention",
                       ds["local"].ok and cache["local"].ok,
                       f"window lock {held} (pid {pid})" if held else "",
                       {"dataset": ds["local"].verdict, "cache": cache["local"].verdict,
                        "running": held == "held"})]
    for h in hosts:
        rows.append(_row(h.name, ds[h.name], cache[h.name], got["lane"][h.name]))
    return Report(f"status ({profile.name})", tuple(rows))


def _row(name, ds, cache, lane):
    if isinstance(lane, HostError):
        return HostResult(name, lane.kind, False, lane.message, {"dataset": ds.verdict, "cache": cache.verdict})
    v = lane["versions"]
    running = any(r["alive"] for r in lane["ranks"])
    figures = {"dataset": ds.verdict, "cache": cache.verdict, "python": v.get("python"), "mlx": v.get("mlx"),
               "mlx_lm": v.get("mlx-lm"), "step": checkpoint.committed_step(lane), "running": running}
    ok = ds.ok and cache.ok
    detail = "; ".join(f"{what}: {r.detail}" for what, r in (("dataset", ds), ("cache", cache)) if not r.ok)
    return HostResult(name, "ok" if ok else "attention", ok, detail, figures)
