"""verify-cache's judgement: one host's HF cache facts (``facts.CacheFacts``), checked for itself
and against local's.

Verdicts: complete, partial (which files, how many bytes missing), corrupt (which file),
absent, other-revision. Local is the reference: if it is not complete, no host can be judged.

Parity is by file names, sizes and blob names (etags), never by how a host stores a blob: in its repo
folder, or (huggingface_hub 2.x) as a link into the cache-wide shared store, which the probe accepts
only for the marked store of the same cache root. Any other link leaving the repo folder is corrupt.
"""
from .report import HostResult, human_bytes

FIGURES = ("revision", "files", "bytes", "missing")


def snapshot_bytes(facts):
    """Bytes of the snapshot, each blob (each shared-store entry, even under two etags) counted once."""
    seen = {}
    for name, entry in facts.files.items():
        if entry.size is not None:
            seen[entry.key or name] = entry.size
    return sum(seen.values())


def missing_against(files, reference, held=None):
    """Files the reference snapshot has that ``files`` (a snapshot's, by name) lacks, absent or
    dangling, and the bytes of the blobs they need (counted once by etag: a host without the store
    needs one each). A blob ``held`` ({etag: size}, see :func:`held_blobs`) at the reference's size
    needs no bytes: the sync sends a blob by its name and size (launcher: ``--size-only``), and an
    interrupted sync leaves the blobs that arrived without the snapshot links made after them."""
    names, blobs, held = [], {}, held or {}
    for name, ref in sorted(reference.files.items()):
        mine = files.get(name)
        if mine is None or mine.size is None:
            names.append(name)
            if not (ref.blob and ref.size is not None and held.get(ref.blob) == ref.size):
                blobs[ref.blob or name] = ref.size or 0
    return names, sum(blobs.values())


def held_blobs(facts, checksum=False):
    """{etag: size} of the host's blobs a sync would not send at that size: those linked into the
    cache's own marked store (the launcher keeps them, ``--checksum`` or not), and its ``blobs/``
    files unless ``checksum`` (rsync then compares contents, and no probe hashes a blob no snapshot
    link names, so one of the right size may still be sent)."""
    return dict(facts.linked) if checksum else {**facts.blobs, **facts.linked}


def figures(facts, missing_bytes=None):
    """The figures behind a verdict (the table's columns and the JSON's)."""
    return {"revision": (facts.ref or "-")[:12], "files": len(facts.files),
            "bytes": human_bytes(snapshot_bytes(facts)) if facts.files else "-",
            "bytes_exact": snapshot_bytes(facts), "missing": human_bytes(missing_bytes),
            "missing_bytes": missing_bytes, "cache_root": facts.cache_root,
            "incomplete": len(_live(facts)), "orphans": len(_orphans(facts)),
            "locks_held": sum(1 for lock in facts.locks if lock.held),
            "store_entries": len({e.store for e in facts.files.values() if e.store})}


def _stored(entry):
    """' (store entry blobs/ab/...)' for a blob kept in the shared store, else ''."""
    return f" (store entry {entry.store})" if entry and entry.store else ""


def _corrupt(facts):
    """The first structural problem that makes this cache untrustworthy, or None."""
    for name, entry in sorted(facts.files.items()):
        if entry.escapes:
            why = entry.refusal or f"links outside the repo folder ({entry.link})"
            return f"snapshots/{facts.ref}/{name} {why}"
    for name, shard in sorted(facts.shards.items()):
        if not shard.ok and shard.reason != "missing":
            return f"{name}{_stored(facts.files.get(name))} is not a whole safetensors file: {shard.reason}"
    for blob, check in sorted((facts.deep or {}).items()):
        if not check.ok:
            files = [n + _stored(e) for n, e in sorted(facts.files.items()) if e.blob == blob]
            return f"blob {blob} ({', '.join(files)}) does not hash to its name: {check.reason}"
    return None


def _own_state(facts):
    """(verdict, detail) from this cache alone, before any comparison."""
    if not facts.exists:
        return "absent", f"no {facts.repo_dir} under {facts.cache_root}"
    if not facts.ref:
        return "partial", "no refs/main: the download never finished"
    if not facts.snapshot_exists:
        return "corrupt", f"refs/main names {facts.ref} but snapshots/{facts.ref} is missing"
    corrupt = _corrupt(facts)
    if corrupt:
        return "corrupt", corrupt
    return None


def _leftovers(facts, against_reference=False):
    """What an interrupted download leaves: dangling links, missing shards, *.incomplete blobs.
    Against a reference, missing files are already listed by name, so shards are not repeated."""
    dangling = [n + _stored(e) for n, e in sorted(facts.files.items()) if e.dangling]
    missing_shards = [] if against_reference else \
        [n for n, s in sorted(facts.shards.items()) if s.reason == "missing"]
    out = []
    if dangling:
        out.append("dangling links: " + ", ".join(dangling))
    if missing_shards:
        out.append("missing shards: " + ", ".join(missing_shards))
    if facts.index_error:
        out.append(facts.index_error)
    hub = [i for i in _live(facts) if i.name.endswith(".incomplete")]
    temp = [i for i in _live(facts) if i.name.startswith(".")]
    if hub:
        out.append(f"{len(hub)} *.incomplete blob(s) left over")
    if temp:
        out.append(f"{len(temp)} interrupted-transfer temp file(s) in blobs/ ({temp[0].name})")
    return out


def _orphans(facts):
    """``*.incomplete`` files beside their finished blob: a killed download's, never reused by the hub's
    client (its name is unique to the process). Not a gap in the cache."""
    return [i for i in facts.incomplete if i.finished]


def _live(facts):
    return [i for i in facts.incomplete if not i.finished]


def _note(facts):
    """'; note: ...' for what is worth knowing but no fault: a store entry whose .refs does not list
    this repo's blob (huggingface_hub would then delete it along with another repo that uses it),
    orphaned *.incomplete files, a download running in this cache now (a lock held)."""
    notes = []
    unlisted = sorted({e.store for e in facts.files.values() if e.store and e.store_listed is False})
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        notes.append(f"the .refs of shared-store entry {unlisted[0]}{more} does not list this repo's blob: "
                     "deleting another repo through huggingface_hub may remove the entry")
    orphans = _orphans(facts)
    if orphans:
        notes.append(f"{len(orphans)} orphaned *.incomplete file(s) beside finished blobs, left by a killed "
                     f"download ({orphans[0].name}); the hub's client never reuses them")
    held = [lock.name for lock in facts.locks if lock.held]
    if held:
        notes.append(f"a download is running in this cache now ({len(held)} lock(s) held: {held[0]})")
    return "".join(f"; note: {n}" for n in notes)


def judge_reference(facts):
    """Local's own verdict: it must be complete on its own to serve as the reference."""
    leftovers = _leftovers(facts)
    state = _own_state(facts) or (("partial", "; ".join(leftovers)) if leftovers else None)
    if state:
        verdict, detail = state
        return HostResult("local", verdict, False, f"{detail} (local is the reference){_note(facts)}", figures(facts))
    return HostResult("local", "complete", True, f"reference, {facts.cache_root}{_note(facts)}", figures(facts))


def judge(host, facts, reference, checksum=False):
    """A host's verdict against local's facts (already judged complete). ``checksum``: the missing
    bytes are those of a sync that compares contents (:func:`held_blobs`)."""
    state, held = _own_state(facts), held_blobs(facts, checksum)
    if state and state[0] == "absent":
        _, missing_bytes = missing_against({}, reference, held)
        return HostResult(host, "absent", False, state[1], figures(facts, missing_bytes))
    if state and facts.ref and not facts.snapshot_exists:
        return HostResult(host, state[0], False, state[1], figures(facts))
    if facts.ref and facts.ref != reference.ref:
        return HostResult(host, "other-revision", False,
                          f"refs/main is {facts.ref[:12]}, local has {reference.ref[:12]}", figures(facts))
    names, missing_bytes = missing_against(facts.files, reference, held)
    shown = figures(facts, missing_bytes)
    if state:
        return HostResult(host, state[0], False, state[1], shown)
    mismatch = _mismatch(facts, reference)
    if mismatch:
        return HostResult(host, "corrupt", False, mismatch, shown)
    leftovers = _leftovers(facts, against_reference=True)
    if names or leftovers:
        detail = [f"missing {len(names)} file(s), {human_bytes(missing_bytes)}: " + ", ".join(names)] \
            if names else []
        return HostResult(host, "partial", False, "; ".join(detail + leftovers) + _note(facts), shown)
    same = "same revision, files, sizes and blobs as local"
    return HostResult(host, "complete", True, same + _note(facts), shown)


def _mismatch(facts, reference):
    """Files present on both sides that differ in blob name or size, or files local lacks."""
    for name, mine in sorted(facts.files.items()):
        ref = reference.files.get(name)
        if ref is None:
            return f"{name} is not in local's snapshot"
        if mine.size is None:
            continue
        if mine.blob != ref.blob:
            return f"{name} links to blob {mine.blob}, local to {ref.blob}"
        if mine.size != ref.size:
            return f"{name}{_stored(mine)} is {mine.size} bytes, local has {ref.size}"
    return None
