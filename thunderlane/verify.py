"""verify-dataset and verify-cache: probe local and every host at once, then judge."""
from dataclasses import replace

from . import cache, dataset, facts, hostenv, requirements, rowmemo
from .remote import PROBE_SOURCE, HostError, ask, ask_each, on_hosts
from .report import HostResult, Report


def unreachable(err):
    """A host that could not be asked, as a result row."""
    return HostResult(err.host, err.kind, False, err.message)


def dataset_query(host):
    """Every host, local too, sums its files (``dataset --sums``). :func:`verify_dataset` takes
    local's row verdicts from the memo (``rowmemo.py``) or has local parse its rows, judges a host's
    rows by local's where the bytes are equal, and asks again, rows and all, only a host whose bytes
    differ."""
    return facts.dataset(host.dataset_root, rows=False)


def cache_query(inv, host, deep=False):
    return facts.cache(inv.repo_id, host.hf_cache, deep)


def verify_dataset(inv, hosts, gathered=None):
    """Dataset verdicts for local and ``hosts``; ``gathered`` ({name: DatasetFacts or HostError})
    if already read (preflight)."""
    got = dict(gathered or ask_each(inv, [inv.local, *hosts], dataset_query))
    local = got.pop("local")
    if not isinstance(local, HostError):
        local = _local_rows(inv, local)
    if isinstance(local, HostError):
        return Report("verify-dataset", (unreachable(local),))
    got = _rows_judged(inv, hosts, got, local)
    results = [dataset.judge("local", local)]
    for name, f in got.items():
        results.append(unreachable(f) if isinstance(f, HostError) else dataset.judge(name, f, local))
    return Report("verify-dataset", tuple(results))


def _local_rows(inv, summed):
    """Local's facts with every row judged: the memo's verdicts where both its keys match, else
    local parses its rows once (and the memo keeps the verdicts). A HostError if local cannot."""
    memo = rowmemo.Memo(inv.local.runs_root, rowmemo.validator(PROBE_SOURCE, inv.local.python))
    local = memo.recall(summed)
    if not dataset.unchecked(local):
        return local
    local = ask_each(inv, [inv.local], lambda h: facts.dataset(h.dataset_root))["local"]
    if not isinstance(local, HostError):
        memo.remember(local)
    return local


def _rows_judged(inv, hosts, got, local):
    """Each host's facts with its rows judged: by local's verdict where the bytes are equal, else read
    on the host itself (a second, full probe of only those hosts, in parallel)."""
    got = {n: f if isinstance(f, HostError) else dataset.inherit(f, local) for n, f in got.items()}
    again = [h for h in hosts if isinstance(got.get(h.name), facts.DatasetFacts) and dataset.unchecked(got[h.name])]
    if again:
        got.update(ask_each(inv, again, lambda h: facts.dataset(h.dataset_root)))
    return got


def gather_caches(inv, hosts, deep=False):
    """Cache facts of local and ``hosts``: {name: CacheFacts or HostError}."""
    return ask_each(inv, [inv.local, *hosts], lambda h: cache_query(inv, h, deep))


def verify_cache(inv, hosts, deep=False):
    """Cache verdicts of local and ``hosts``, and the hosts' version parity (python and every pinned
    package, the hosts among themselves and against the pins: the control machine is no rank)."""
    pins = requirements.shipped()
    wanted = facts.versions(requirements.names(pins))
    asked = on_hosts([inv.local, *hosts], lambda h: ask(inv, h, *([cache_query(inv, h, deep)]
                                                                  + ([] if h.is_local else [wanted]))))
    got = {n: a if isinstance(a, HostError) else a[0] for n, a in asked.items()}
    versions = {n: a[1] for n, a in asked.items() if n != "local" and not isinstance(a, HostError)}
    return with_versions(judge_caches(got, deep), hostenv.parity(versions, pins)), got


def with_versions(report, problems):
    """``report`` with each host's version problems added: such a host is not ok (verdict 'versions'
    where its cache alone was fine)."""
    results = [r if not problems.get(r.host) else
               replace(r, verdict=r.verdict if not r.ok else "versions", ok=False,
                       detail="; ".join(filter(None, [r.detail, *problems[r.host]])))
               for r in report.results]
    return replace(report, results=tuple(results))


def judge_caches(gathered, deep=False):
    """Local's own verdict, then every host's against local (unchecked when local is not complete).
    ``deep``: facts re-hashed, as ``verify-cache --deep`` and ``sync --checksum`` ask them; the
    missing bytes are then a contents-comparing sync's (``cache.held_blobs``)."""
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
            results.append(cache.judge(name, f, local, checksum=deep))
    notes = () if deep else ("(fast check: sizes and structure; --deep re-hashes every blob)",)
    return Report("verify-cache", tuple(results), notes)
