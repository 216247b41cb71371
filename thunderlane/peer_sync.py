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

from . import layout, peers
from .peer_plan import LOCAL, Fill, Step
from .peer_setup import local_key, pinned_keys
from .remote import HostError, ask_each
from .sync import SyncError, dest_cache_of, sync_cache
from .verify import gather_caches, judge_caches


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


def launcher_pulls():
    """Does the sync launcher take ``--from-host`` (a host pulling from a peer)?"""
    return "--from-host" in layout.SYNC.read_text(encoding="utf-8")


def survey(inv, targets, forced=None, checksum=False):
    """The plan's inputs. Raises :class:`SyncError` when local cannot be the reference."""
    caches = gather_caches(inv, list(inv.hosts.values()), deep=checksum)
    report = judge_caches(caches, deep=checksum)
    if not report.results[0].ok:
        ref = report.results[0]
        raise SyncError(f"local cache is {ref.verdict}, so it cannot be the source: {ref.detail}")
    verdicts = {r.host: r for r in report.results[1:]}
    complete = [n for n in inv.hosts if verdicts[n].ok]
    cold = [t.name for t in targets if t.name not in complete]
    candidates = [forced] if forced else complete
    if not cold or forced == LOCAL or not candidates:
        return Sources(caches, complete, {}, {}), verdicts
    asked = [inv.hosts[n] for n in dict.fromkeys(cold + candidates)]
    got = ask_each(inv, asked, lambda h: peers.query())
    # a target that finishes serves the next, so cold hosts are sources too (not with --from)
    problems = link_problems(inv, candidates if forced else complete + cold, cold, got)
    return Sources(caches, complete, got, problems), verdicts


def link_problems(inv, sources, targets, got):
    """{(source, target): why not, or None} for every pair (the launcher and local's key first)."""
    _, pub = local_key(inv)
    common = None if launcher_pulls() else "the sync launcher cannot pull from a peer (no --from-host)"
    if pub is None:
        common = common or "there is no peer key on local (fab setup-peers makes and installs it)"
    pinned = pinned_keys(inv) if common is None else {}
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
    sources, verdicts = survey(inv, targets, forced, checksum)
    refuse_forced(forced, targets, sources, verdicts)
    names = [t.name for t in targets]
    plan = Fill(names, list(sources.complete), sources.problems, forced=forced, chain=not dry_run)
    first = plan.start()
    warm = [Step(n, LOCAL, "complete already: verified, only what differs is sent") for n in names
            if n in sources.complete]
    args = dict(dry_run=dry_run, checksum=checksum, bwlimit=bwlimit, verbose=verbose, out=out)
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
    out = args["out"]
    out.write(describe(inv, step) + "\n")
    try:
        options = () if step.source == LOCAL else _pull_options(inv, sources, step)
        return Filled(step, sync_cache(inv, host, source=options, **args))
    except SyncError as e:
        return Filled(step, error=str(e))
    except HostError as e:
        return Filled(step, error=e.message)


def _pull_options(inv, sources, step):
    src, tgt = inv.hosts[step.source], inv.hosts[step.target]
    src_cache = dest_cache_of(src, sources.caches[src.name])
    return peers.launcher_options(src, tgt, sources.peer_facts, src_cache, inv.ssh.connect_timeout)
