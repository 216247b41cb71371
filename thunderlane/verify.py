"""verify-dataset and verify-cache: probe local and every host at once, then judge."""
from . import cache, dataset, facts
from .remote import HostError, ask_each
from .report import HostResult, Report


def unreachable(err):
    """A host that could not be asked, as a result row."""
    return HostResult(err.host, err.kind, False, err.message)


def dataset_query(host):
    return facts.dataset(host.dataset_root)


def cache_query(inv, host, deep=False):
    return facts.cache(inv.repo_id, host.hf_cache, deep)


def verify_dataset(inv, hosts, gathered=None):
    """Dataset verdicts for local and ``hosts``; ``gathered`` ({name: DatasetFacts or HostError})
    if already read (preflight)."""
    got = dict(gathered or ask_each(inv, [inv.local, *hosts], dataset_query))
    local = got.pop("local")
    if isinstance(local, HostError):
        return Report("verify-dataset", (unreachable(local),))
    results = [dataset.judge("local", local)]
    for name, f in got.items():
        results.append(unreachable(f) if isinstance(f, HostError) else dataset.judge(name, f, local))
    return Report("verify-dataset", tuple(results))


def gather_caches(inv, hosts, deep=False):
    """Cache facts of local and ``hosts``: {name: CacheFacts or HostError}."""
    return ask_each(inv, [inv.local, *hosts], lambda h: cache_query(inv, h, deep))


def verify_cache(inv, hosts, deep=False):
    got = gather_caches(inv, hosts, deep)
    return judge_caches(got, deep), got


def judge_caches(gathered, deep=False):
    """Local's own verdict, then every host's against local (unchecked when local is not complete)."""
    got = dict(gathered)
    local = got.pop("local")
    if isinstance(local, HostError):
        return Report("verify-cache", (unreachable(local),))
    ref = cache.judge_reference(local)
    results = [ref]
    for name, f in got.items():
        if isinstance(f, HostError):
            results.append(unreachable(f))
        elif not ref.ok:
            results.append(HostResult(name, "unchecked", False,
                                      "local is not complete, so there is no reference to compare with",
                                      cache.figures(f)))
        else:
            results.append(cache.judge(name, f, local))
    notes = () if deep else ("(fast check: sizes and structure; --deep re-hashes every blob)",)
    return Report("verify-cache", tuple(results), notes)
