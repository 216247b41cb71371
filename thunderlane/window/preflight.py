"""Preflight: before a window spends compute, every host of the profile is proven ready, in
parallel: dataset parity, cache complete, same Python and pinned packages and model revision, free disk,
no window running."""
from .. import checkpoint, hostenv, requirements
from ..remote import HostError, ask, on_hosts
from ..report import HostResult, Report, human_bytes
from ..verify import cache_query, dataset_query, judge_caches, verify_dataset
from . import datapath, macos
from .lock import lock_dir, lock_holder_of
from .writer import profile_hosts, run_query


KEYS = ("dataset", "cache", "run")


def gather(inv, hosts, profile, first=None):
    """Dataset, cache and run facts of local and every host, one ssh session per host:
    {"dataset": {name: facts}, "cache": {...}, "run": {...}, "first": {name: [answers]}} (a HostError
    where one failed). ``first``: {host: queries} asked before those in the same session (the data
    path, which needs every host's session at once, and the macOS facts)."""
    first = first or {}

    def queries(h):
        own = [dataset_query(h), cache_query(inv, h)] + ([] if h.is_local else [run_query(h, profile)])
        extra = first.get(h.name, [])
        timeout = inv.ssh.probe_timeout + datapath.WAIT + datapath.TIMEOUT if extra else None
        return ask(inv, h, *extra, *own, timeout=timeout)
    got = on_hosts([inv.local, *hosts], queries)
    out = {key: {} for key in (*KEYS, "first")}
    for name, res in got.items():
        skip = len(first.get(name, []))
        out["first"][name] = res if isinstance(res, HostError) else res[:skip]
        for i, key in enumerate(KEYS):
            if key == "run" and name == "local":
                continue
            out[key][name] = res if isinstance(res, HostError) else res[skip + i]
    return out


def _first_queries(hosts, backend):
    """{host: [data-path queries..., macOS query]}, or a PortError's text for local."""
    try:
        links = datapath.queries(hosts, backend)
    except datapath.PortError as e:
        return {h.name: [macos.query()] for h in hosts}, str(e)
    return {h.name: [*links[h.name], macos.query()] for h in hosts}, None


def preflight(inv, profile):
    """A Report whose failures name host and reason, the run facts it read ({host: RunFacts}) and
    local's (DatasetFacts, CacheFacts), so the caller need not ask again. One ssh session per host answers everything (dataset, cache,
    run directory, the ring's data path, macOS), every host at once."""
    hosts = profile_hosts(inv, profile)
    first, port_error = _first_queries(hosts, profile.backend)
    got = gather(inv, hosts, profile, first)
    problems = {h.name: [] for h in hosts}
    for what, report in (("dataset", verify_dataset(inv, hosts, got["dataset"])),
                         ("cache", judge_caches(got["cache"]))):
        for r in report.results:
            if not r.ok:
                problems.setdefault(r.host, []).append(f"{what} {r.verdict}: {r.detail}")
    runs = got["run"]
    _run_problems(inv, profile, hosts, runs, problems)
    answers = {h.name: got["first"][h.name] for h in hosts}
    _links(profile, hosts, answers, port_error, problems)
    shown = {}  # {host: "macOS: caffeinate, F_FULLFSYNC, firewall on, python allowed" or "not darwin ..."}
    macos.check({n: a[-1] for n, a in answers.items() if not isinstance(a, HostError)}, problems, shown)
    results = [HostResult(name, datapath.verdict(items), not items, "; ".join(items),
                          {**_figures(runs.get(name)), **({"macos": shown[name]} if name in shown else {})})
               for name, items in problems.items()]
    local = (got["dataset"]["local"], got["cache"]["local"])
    return (Report("preflight", tuple(results)), {k: v for k, v in runs.items() if not isinstance(v, HostError)},
            None if any(isinstance(f, HostError) for f in local) else local)


def _links(profile, hosts, answers, port_error, problems):
    """The ring's data path (or jaccl's coordinator and RDMA devices), judged once every host answered."""
    if port_error:
        problems.setdefault("local", []).append(port_error)
        return
    if any(isinstance(a, HostError) for a in answers.values()):
        return
    for name, items in datapath.judge(hosts, profile.backend, {n: a[:-1] for n, a in answers.items()}).items():
        problems.setdefault(name, []).extend(items)


def _figures(run):
    if run is None or isinstance(run, HostError):
        return {}
    v = run.versions
    return {"python": v.python, "mlx": v.mlx, "mlx_lm": v.mlx_lm, "free": human_bytes(run.free_bytes),
            "step": checkpoint.committed_step(run)}


def _run_problems(inv, profile, hosts, runs, problems):
    reachable = {}
    for h in hosts:
        f = runs[h.name]
        if isinstance(f, HostError):
            problems[h.name].append(f"{f.kind}: {f.message}")
            continue
        reachable[h.name] = f
        if f.free_bytes is not None and f.free_bytes < profile.min_free_mb * 2**20:
            problems[h.name].append(f"only {human_bytes(f.free_bytes)} free under {h.runs_root}, "
                                    f"the profile wants {profile.min_free_mb} MiB")
        if f.running:
            problems[h.name].append(f"a window is still running here (rank pids {f.running})")
        if checkpoint.committed_step(f) is None:
            problems[h.name].append(f"{f.run_dir}/checkpoint.json is unreadable")
    _agree(reachable, problems)
    _same_python(hosts, problems)
    _steps_apart(reachable, problems)
    held = lock_problem(inv, profile)
    if held:
        problems.setdefault("local", []).append(held)


def lock_problem(inv, profile):
    """What preflight says while the window lock is held, naming its holder when its note does."""
    state, pid, holder = lock_holder_of(inv, profile)
    if state != "held":
        return None
    where = lock_dir(inv, profile)
    if holder:
        return f"{holder.words()} holds the window lock {where}"
    return f"another window holds the lock {where} (pid {pid})"


def _steps_apart(reachable, problems):
    """Ranks may end one commit apart (a rank killed between the barrier and its checkpoint.json):
    every rank resumes from the lowest committed step, so each rank ahead must still keep it."""
    steps = {n: checkpoint.committed_step(f) for n, f in reachable.items()}
    if len(set(steps.values())) < 2 or None in steps.values():
        return
    low = min(steps.values())
    for name, step in steps.items():
        if step > low and not checkpoint.keeps(reachable[name].record, low):
            problems[name].append(f"committed step {step} here and step {low}'s files are no longer kept, "
                                  f"so the ranks cannot resume together ({steps})")


def _agree(reachable, problems):
    """Python and every package of the host requirements must be the same everywhere, and pinned:
    name both sides of a mismatch."""
    found = hostenv.parity({name: f.versions for name, f in reachable.items()}, requirements.shipped())
    for name, items in found.items():
        problems[name].extend(items)


def _same_python(hosts, problems):
    """mlx.launch takes one --python for every host: the inventory must name the same path."""
    first = hosts[0]
    for h in hosts[1:]:
        if h.python != first.python:
            problems[h.name].append(f"python {h.python} differs from {first.name}'s {first.python}: "
                                    "mlx.launch takes one --python for every host")
