"""Which source fills which cold host, and when: pure, so every case is tested without a host.

A source is local or a compute host whose cache is complete (same revision, files and blobs as
local's: verify-cache's verdict) and that the target can pull from over the data link with the
peer key (``peers.link_problem``). Each source serves one target at a time; peers are preferred
(the data link is the fast one), local is the source of last resort. A target that finishes
becomes a source for the next; a peer that fails mid-way is dropped, and its target is filled
from local instead.
"""
from dataclasses import dataclass, field

LOCAL = "local"


@dataclass(frozen=True)
class Step:
    """One transfer to start: ``target`` from ``source``; ``why`` the source was chosen;
    ``fallback``: the earlier source that failed, if this is a second try from local."""
    target: str
    source: str
    why: str
    fallback: str | None = None


def choose(target, complete, problems, busy=frozenset(), broken=frozenset(), blocked=None):
    """The source for ``target``: (name, why), or (None, why) if every usable one is busy.
    ``complete``: hosts whose cache is complete, in order of preference; ``problems``:
    {(source, target): why that link cannot be used, or None}; ``busy`` sources serve another
    target now; ``broken`` ones failed once and are not used again; ``blocked``: why no peer
    can serve at all (then local is the source)."""
    unusable = [blocked] if blocked else []
    for src in complete if not blocked else ():
        if src == target or src in broken:
            continue
        why = problems.get((src, target), "not checked")
        if why:
            unusable.append(f"{src}: {why}")
        elif src in busy:
            unusable.append(f"{src}: busy")
        else:
            return src, f"{src} is complete and reachable over the data link"
    if LOCAL in busy:
        return None, "every source is busy"
    if blocked:
        return LOCAL, f"no peer can serve it: {blocked}"
    peers = "; ".join(unusable) or "no other host has a complete cache"
    return LOCAL, f"no complete peer can serve it ({peers})"


@dataclass
class Fill:
    """The schedule of one sync-cache over several cold hosts, driven by :meth:`start` and
    :meth:`finished`; each returns the transfers to begin now. ``forced``: the one source every
    target must use (``--from``): no other is chosen and no fallback is made. ``chain``: a target
    that finishes serves the next (not in a dry run, which fills nothing)."""
    targets: list
    complete: list
    problems: dict
    forced: str | None = None
    chain: bool = True
    blocked: str | None = None
    waiting: list = field(default_factory=list)
    busy: dict = field(default_factory=dict)      # target -> its Step
    broken: set = field(default_factory=set)
    fell_back: dict = field(default_factory=dict)  # target -> the peer that failed it: local now
    done: list = field(default_factory=list)
    failed: list = field(default_factory=list)

    def start(self):
        self.waiting = [t for t in self.targets if t not in self.complete]
        return self._assign()

    def finished(self, target, ok):
        """``target``'s transfer ended (``ok``: verified complete). Returns the next transfers."""
        step = self.busy.pop(target)
        if ok:
            self.done.append(target)
            if self.forced is None and self.chain:
                self.complete.append(target)
        elif step.source != LOCAL and self.forced is None:
            self.broken.add(step.source)
            self.fell_back[target] = step.source
            self.waiting.insert(0, target)
        else:
            self.failed.append(target)
        return self._assign()

    @property
    def over(self):
        return not self.waiting and not self.busy

    def _sources_busy(self):
        return {s.source for s in self.busy.values()}

    def _assign(self):
        steps = []
        for target in list(self.waiting):
            src, why = self._pick(target)
            if src is None:
                continue
            self.waiting.remove(target)
            prior = self.fell_back.get(target)
            step = Step(target, src, why if prior is None else f"{prior} failed; falling back to local", prior)
            self.busy[target] = step
            steps.append(step)
        return steps

    def _pick(self, target):
        busy = self._sources_busy()
        if self.forced is not None:
            return (None, "busy") if self.forced in busy else (self.forced, f"--from {self.forced}")
        if target in self.fell_back:
            return (None, "busy") if LOCAL in busy else (LOCAL, "fallback")
        return choose(target, self.complete, self.problems, busy, self.broken, self.blocked)
