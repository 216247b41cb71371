"""sync-cache over several hosts: each cold host filled from the nearest complete source, in
parallel, one target per source at a time (``peer_plan.Fill``), each transfer being
``sync.sync_cache`` with the launcher told to pull from a peer over the data link when the source
is a host. Every target is verified against local afterwards, whatever its source.

Plan first (cache facts of local and every host, the peer key's facts where a peer could serve),
refuse a ``--from`` that cannot serve before anything moves, then act.
"""
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from . import layout, mux, peers
from .peer_plan import LOCAL, Fill, Step
from .peer_setup import key_path, local_key, pinned_keys
from .remote import HostError, ask, on_hosts
from .sync import SyncError, dest_cache_of, sync_cache
from .verify import cache_query, gather_caches, judge_caches

SURVEY_TIMEOUT = 30  # seconds a possible source may take to answer before it is left out


@dataclass
class Filled:
    """One target's end: the Step that filled it (or last tried), its SyncOutcome or error, and
    the earlier peer attempt's error when it fell back to local."""
    step: Step
    outcome: object = None
    error: str | None = None
    fallback_error: str | None = None

    @property
    def ok(self):
        return self.error is None and self.outcome is not None and self.outcome.ok


@dataclass(frozen=True)
class Sources:
    """What the plan knows: the hosts' cache facts, which are complete, the peer facts and, for
    every (source, target), why that link cannot be used (None: it can)."""
    caches: dict
    complete: list
    peer_facts: dict
    problems: dict
    blocked: str | None = None   # why no peer can serve at all


def launcher_pulls():
    """Does the sync launcher take ``--from-host`` (a host pulling from a peer)?"""
    return "--from-host" in layout.SYNC.read_text(encoding="utf-8")


def survey(inv, targets, forced=None, checksum=False, on_cold=None):
    """The plan's inputs and every host's verdict. First today's probe (local and the targets); only
    when a target is cold and a peer could serve, the other hosts' caches and the peer key's facts
    (``on_cold(names)`` is told the cold targets before those are asked). Raises :class:`SyncError`
    when local cannot be the reference. When no peer can serve anyway (``--from local``, no peer key
    on local) nothing is asked here: each sync asks for itself."""
    blocked = peers_blocked(inv) if forced is None else None
    if forced == LOCAL or blocked:
        return Sources({}, [], {}, {}, blocked), {}
    # --from's host is always looked at: an incomplete source is refused even with nothing to pull
    others = [h for h in inv.hosts.values() if h not in targets and forced in (None, h.name)]
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        # --from a host: it (cache and peer facts) is asked beside the targets' probe, not after it,
        # and the targets' peer facts come in their probe's session (one session per host)
        with_peers = bool(forced) and not peers_blocked(inv)
        ahead = pool.submit(_ask_peers, inv, others, [], checksum, with_peers) if forced else None
        return _surveyed(inv, targets, forced, checksum, on_cold, others, ahead, with_peers)
    except BaseException:   # a refusal or Ctrl-C is said at once, not after that ask (a deep one takes minutes)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False)


def _surveyed(inv, targets, forced, checksum, on_cold, others, ahead, with_peers=False):
    caches, targets_peers = gather_targets(inv, targets, checksum, with_peers)
    verdicts = _verdicts(caches, checksum)
    complete = [t.name for t in targets if verdicts[t.name].ok]
    cold = [t.name for t in targets if not verdicts[t.name].ok]
    if not (cold or forced):
        return Sources(caches, complete, {}, {}), verdicts
    blocked = peers_blocked(inv) if cold else None
    if blocked and not forced:
        return Sources(caches, complete, {}, {}, blocked), verdicts
    if cold and on_cold:
        on_cold(cold)
    # peer facts of every target too: a complete one named among the targets (no --host) serves the cold
    more, got = ahead.result() if ahead else _ask_peers(inv, others, [inv.hosts[n] for n in cold + complete],
                                                        checksum, peer_facts=cold and not blocked)
    got = {**targets_peers, **got}
    caches.update(more)
    verdicts.update(_verdicts({"local": caches["local"], **more}, checksum))
    complete += [h.name for h in others if verdicts[h.name].ok]
    if blocked or not cold:
        return Sources(caches, complete, {}, {}, blocked), verdicts
    # a target that finishes serves the next, so cold hosts are sources too (not with --from)
    sources = [forced] if forced else complete + cold
    problems = link_problems(inv, sources, cold, got)
    return Sources(caches, complete, got, problems), verdicts


def _verdicts(caches, checksum):
    report = judge_caches(caches, deep=checksum)
    ref = report.results[0]
    if not ref.ok:
        raise SyncError(f"local cache is {ref.verdict}, so it cannot be the source: {ref.detail}")
    return {r.host: r for r in report.results[1:]}


def gather_targets(inv, targets, checksum, with_peers):
    """({local and target: CacheFacts or HostError}, {target: PeerFacts or HostError}): the targets'
    cache facts and, ``with_peers``, their peer facts in the same session (else {})."""
    if not with_peers:
        return gather_caches(inv, targets, deep=checksum), {}
    asked = on_hosts([inv.local, *targets], lambda h: ask(inv, h, cache_query(inv, h, checksum),
                                                         *([] if h.is_local else [peers.query()])))
    caches = {n: a if isinstance(a, HostError) else a[0] for n, a in asked.items()}
    return caches, {n: a if isinstance(a, HostError) else a[1] for n, a in asked.items() if n != LOCAL}


def _ask_peers(inv, others, cold, checksum, peer_facts=True):
    """({other host: CacheFacts or HostError}, {host: PeerFacts or HostError}) in one session per
    host. A peer that does not answer within SURVEY_TIMEOUT is no source (the sync goes on)."""
    def one(h):
        queries = ([cache_query(inv, h, checksum)] if h in others else []) + ([peers.query()] if peer_facts else [])
        return ask(inv, h, *queries, timeout=None if checksum else min(inv.ssh.probe_timeout, SURVEY_TIMEOUT))
    answers = on_hosts(list(dict.fromkeys(others + (cold if peer_facts else []))), one)
    caches = {h.name: a if isinstance(a, HostError) else a[0] for h, a in
              ((inv.hosts[n], a) for n, a in answers.items()) if h in others}
    got = {n: a if isinstance(a, HostError) else a[-1] for n, a in answers.items()} if peer_facts else {}
    return caches, got


def peers_blocked(inv):
    """Why no peer can serve at all (the launcher, local's peer key, local's known_hosts), or None."""
    if not launcher_pulls():
        return "the sync launcher cannot pull from a peer (no --from-host)"
    if key_path(inv).is_file():
        return None
    return "there is no peer key on local (fab setup-peers makes and installs it)"


def link_problems(inv, sources, targets, got):
    """{(source, target): why not, or None} for every pair."""
    try:
        _, pub = local_key(inv)
        pinned = pinned_keys(inv)
    except HostError as e:
        pub, pinned, common = None, {}, e.message
    except OSError as e:
        pub, pinned, common = None, {}, f"local's peer key cannot be read ({e}): run fab setup-peers again"
    else:
        common = None
    return {(s, t): common or peers.link_problem(inv.hosts[s], inv.hosts[t], got, pub, pinned)
            for s in sources for t in targets if s != t}


def refuse_forced(forced, targets, sources, verdicts):
    """Raise :class:`SyncError` naming why ``--from forced`` cannot serve every cold target."""
    if forced in (None, LOCAL):
        return
    if forced in {t.name for t in targets}:
        raise SyncError(f"--from {forced}: a host cannot be its own source")
    if forced not in sources.complete:
        v = verdicts[forced]
        raise SyncError(f"--from {forced}: its cache is {v.verdict} ({v.detail}); a source must be complete, "
                        f"at local's revision")
    if sources.blocked:
        raise SyncError(f"--from {forced}: {sources.blocked}")
    for (src, tgt), why in sorted(sources.problems.items()):
        if why:
            raise SyncError(f"--from {forced}: {tgt} cannot pull from {src}: {why}")


def describe(inv, step):
    """'mac4 <- mac5 over the data link (198.19.x.y): why' or 'mac4 <- local: why'."""
    if step.source == LOCAL:
        return f"{step.target} <- local over the control link: {step.why}"
    return f"{step.target} <- {step.source} over the data link ({inv.hosts[step.source].data_ip}): {step.why}"


def fill(inv, targets, forced=None, dry_run=False, checksum=False, bwlimit=None, verbose=False, out=sys.stdout):
    """Make every target complete, each from its chosen source; a list of :class:`Filled`, in the
    order the targets were given. Raises :class:`SyncError` before any transfer when local is not
    complete or ``forced`` (``--from``) cannot serve."""
    masters = {}  # the cold targets' ssh masters, opened while the peers are asked (``mux.py``)
    try:
        return _fill(inv, targets, forced, checksum, masters, dict(dry_run=dry_run, checksum=checksum,
                                                                  bwlimit=bwlimit, verbose=verbose, out=out))
    finally:
        for master in masters.values():
            master.close()


def _fill(inv, targets, forced, checksum, masters, args):
    def open_masters(names):
        masters.update((n, mux.Master(inv, inv.hosts[n])) for n in names if n not in masters)
    if forced not in (None, LOCAL):  # --from a host: a transfer is the likely end, the survey is one round
        open_masters([t.name for t in targets])
    sources, verdicts = survey(inv, targets, forced, checksum, on_cold=open_masters)
    refuse_forced(forced, targets, sources, verdicts)
    names = [t.name for t in targets]
    dry_run = args["dry_run"]
    plan = Fill(names, list(sources.complete), sources.problems, forced=forced, chain=not dry_run,
                blocked=sources.blocked)
    first = plan.start()
    warm = [Step(n, forced or LOCAL, "complete already: verified, only what differs is sent") for n in names
            if n in sources.complete]
    # the transfers that start now: the survey's facts of local and their targets are as fresh as a
    # verify of their own would be; each takes them once, with its target's master (a later transfer
    # or a fallback asks again: its host may have changed since)
    args["ahead"] = {s.target: masters.get(s.target) for s in first}
    for name in set(masters) - set(args["ahead"]):
        masters.pop(name).close()
    ended, failed_peer = {}, {}
    with ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
        running = {pool.submit(_transfer, inv, sources, s, args): s for s in warm + first}
        while running:
            for future in wait(running, return_when=FIRST_COMPLETED)[0]:
                step = running.pop(future)
                result = future.result()
                if step.fallback:
                    result.fallback_error = failed_peer.get(step.target)
                ended[step.target] = result
                if step in warm:
                    continue
                ok = result.ok or (dry_run and result.error is None)
                if not ok and step.source != LOCAL:
                    failed_peer[step.target] = result.error or _after(result)
                for nxt in plan.finished(step.target, ok):
                    running[pool.submit(_transfer, inv, sources, nxt, args)] = nxt
    return [ended[n] for n in names if n in ended]


def _after(result):
    after = result.outcome.after if result.outcome else None
    return f"{after.verdict} after the transfer: {after.detail}" if after else "no result"


def _transfer(inv, sources, step, args):
    """One Step: the source named, the launcher run (pulling from a peer, or pushed from local)."""
    host = inv.hosts[step.target]
    args = dict(args)
    ahead, out = args.pop("ahead"), args["out"]
    started_now = host.name in ahead and not step.fallback
    master = ahead.pop(host.name, None)
    out.write(describe(inv, step) + "\n")
    try:
        options = () if step.source == LOCAL else _pull_options(inv, sources, step)
        # a host the survey found complete (the no-op stays one round), or whose transfer starts right
        # after the survey: its facts are not asked again
        known = {n: sources.caches[n] for n in (LOCAL, host.name)} if \
            (host.name in sources.complete or started_now) and LOCAL in sources.caches and \
            not isinstance(sources.caches.get(host.name, HostError), HostError) else None
        return Filled(step, sync_cache(inv, host, source=options, gathered=known, master=master if known else None,
                                       **args))
    except SyncError as e:
        return Filled(step, error=str(e))
    except HostError as e:
        return Filled(step, error=e.message)


def _pull_options(inv, sources, step):
    src, tgt = inv.hosts[step.source], inv.hosts[step.target]
    src_cache = dest_cache_of(src, sources.caches[src.name])
    return peers.launcher_options(src, tgt, sources.peer_facts, src_cache, inv.ssh,
                                  inv.ssh.peer_transport)
