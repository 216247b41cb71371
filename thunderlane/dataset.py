"""verify-dataset's judgement: one host's dataset facts (``facts.DatasetFacts``), against its
manifest and against local's."""
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from .onhost.probe import DATA_FILES, MANIFEST
from .report import HostResult

FIGURES = ("rows", "bytes", "digest")


def digest(facts):
    """A short content digest of the dataset: sha256 over each file's name and sha256."""
    h = hashlib.sha256()
    for name in DATA_FILES:
        h.update(f"{name} {facts.file(name).sha256}\n".encode())
    h.update(f"{MANIFEST} {facts.manifest.sha256}\n".encode())
    return h.hexdigest()[:16]


def judge(host, facts, reference=None):
    """A :class:`HostResult` for one host. ``reference`` is local's facts (None for local itself)."""
    problem = _own_problem(host, facts) or _manifest_problem(host, facts)
    shown = figures(facts)
    if problem:
        verdict, detail = problem
        return HostResult(host, verdict, False, detail, shown)
    if reference is not None:
        if _own_problem("local", reference) or _manifest_problem("local", reference):
            return HostResult(host, "unchecked", False, "local, the reference, is not valid", shown)
        differs = differing_files(facts, reference)
        if differs:
            return HostResult(host, "differs", False,
                              "content differs from local: " + ", ".join(differs), shown)
    return HostResult(host, "ok", True, f"{len(DATA_FILES)} files + manifest", shown)


def inherit(facts, reference):
    """``facts`` (a host's, summed with ``dataset --sums``) with each unchecked file whose sha256 equals
    the reference's checked file taking that file's row verdict (format, first bad row): identical
    bytes are identical rows, so the host's errors still name its own host, file and line."""
    files = {}
    for name, mine in facts.files.items():
        theirs = reference.file(name)
        if mine.present and not mine.checked and theirs.present and theirs.checked and theirs.sha256 == mine.sha256:
            mine = replace(mine, format=theirs.format, bad=theirs.bad, checked=True)
        files[name] = mine
    return replace(facts, files=MappingProxyType(files))


def unchecked(facts):
    """Names of the present files whose rows nobody has judged: their host must read them."""
    return [name for name, f in facts.files.items() if f.present and not f.checked]


def figures(facts):
    files = [f for f in facts.files.values() if f.present]
    if not files:
        return {}
    return {"rows": sum(f.lines for f in files), "bytes": sum(f.bytes for f in files),
            "digest": digest(facts)}


def _own_problem(host, facts):
    if not facts.exists:
        return "absent", f"dataset root {facts.root} does not exist"
    missing = [n for n in DATA_FILES if not facts.file(n).present]
    if not facts.manifest.present:
        missing.append(MANIFEST)
    if missing:
        return "missing", f"{host}:{missing[0]}: missing in {facts.root}" + \
            (f" (also {', '.join(missing[1:])})" if missing[1:] else "")
    if unchecked(facts):
        return "unchecked", f"{host}:{unchecked(facts)[0]}: rows not validated (summed only)"
    for name in DATA_FILES:
        bad = facts.file(name).bad
        if bad:
            return "invalid", f"{host}:{name}:{bad.line}: {bad.reason}"
    if facts.file("train.jsonl").lines == 0:
        return "invalid", f"{host}:train.jsonl:0: the train split is empty"
    return None


def _manifest_problem(host, facts):
    manifest = facts.manifest
    if manifest.error:
        return "invalid", f"{host}:{MANIFEST}: {manifest.error}"
    listed = manifest.data.get("files") if isinstance(manifest.data, Mapping) else None
    if not isinstance(listed, Mapping):
        return "invalid", f"{host}:{MANIFEST}: no 'files' mapping"
    for name in DATA_FILES:
        want = listed.get(name)
        if not isinstance(want, Mapping):
            return "manifest", f"{host}:{MANIFEST}: does not list {name}"
        have = facts.file(name)
        for key in ("lines", "bytes", "sha256"):
            if want.get(key) != getattr(have, key):
                return "manifest", f"{host}:{name}: {key} is {getattr(have, key)}, {MANIFEST} says {want.get(key)}"
    return None


def differing_files(facts, reference):
    """Files whose content differs from the reference, by sha256 (a same-length edit counts)."""
    out = []
    for name in DATA_FILES:
        mine, theirs = facts.file(name), reference.file(name)
        if mine.sha256 != theirs.sha256:
            same = " (same line count)" if mine.lines == theirs.lines else ""
            out.append(f"{name}{same}")
    if facts.manifest.sha256 != reference.manifest.sha256:
        out.append(MANIFEST)
    return out
