"""verify-dataset and verify-cache: probe local and every host at once, then judge."""
from . import cache, dataset
from .remote import HostError, on_hosts, run_probe
from .report import HostResult, Report


def _unreachable(err):
    return HostResult(err.host, err.kind, False, err.message)


def gather(inv, hosts, args_for):
    """Probe local and ``hosts`` in parallel: {name: facts or HostError}."""
    return on_hosts([inv.local, *hosts], lambda h: run_probe(inv, h, args_for(h)))


def dataset_args(host):
    return ["dataset", host.dataset_root]


def verify_dataset(inv, hosts, facts=None):
    """Dataset verdicts for local and ``hosts``; ``facts`` if already gathered (preflight)."""
    facts = dict(facts or gather(inv, hosts, dataset_args))
    local = facts.pop("local")
    if isinstance(local, HostError):
        return Report("verify-dataset", (_unreachable(local),))
    results = [dataset.judge("local", local)]
    for name, f in facts.items():
        results.append(_unreachable(f) if isinstance(f, HostError) else dataset.judge(name, f, local))
    return Report("verify-dataset", tuple(results))


def cache_args(inv, host, deep=False):
    return ["cache", inv.repo_id, host.hf_cache or "-", *(["--deep"] if deep else [])]


def verify_cache(inv, hosts, deep=False):
    facts = gather(inv, hosts, lambda h: cache_args(inv, h, deep))
    return judge_caches(facts, deep), facts


def judge_caches(facts, deep=False):
    facts = dict(facts)
    local = facts.pop("local")
    if isinstance(local, HostError):
        return Report("verify-cache", (_unreachable(local),))
    ref = cache.judge_reference(local)
    results = [ref]
    for name, f in facts.items():
        if isinstance(f, HostError):
            results.append(_unreachable(f))
        elif not ref.ok:
            results.append(HostResult(name, "unchecked", False,
                                      "local is not complete, so there is no reference to compare with",
                                      cache._figures(f)))
        else:
            results.append(cache.judge(name, f, local))
    notes = () if deep else ("(fast check: sizes and structure; --deep re-hashes every blob)",)
    return Report("verify-cache", tuple(results), notes)
