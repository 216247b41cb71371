"""What the on-host probe reports, as frozen values: the one place its JSON becomes typed facts.

The probe (``onhost/probe.py``) runs on each host with nothing but the stdlib and prints JSON.
``remote.ask`` hands that JSON here the moment it arrives; from then on the judges (``dataset``,
``cache``, ``checkpoint``, ``mirror``, preflight) read attributes, never string-keyed dicts.
A :class:`Query` pairs the probe's command line with the parser of its answer.
"""
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping


def _frozen(mapping, build=lambda v: v):
    return MappingProxyType({k: build(v) for k, v in (mapping or {}).items()})


def _freeze_json(value):
    """A parsed JSON document made read-only (mappings become mapping proxies, lists tuples)."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze_json(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze_json(v) for v in value)
    return value


def thaw(value):
    """A frozen JSON document back to plain dicts and lists (for reports written as JSON)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


# --- documents: manifest.json, checkpoint.json ---------------------------------------------------

@dataclass(frozen=True)
class JsonDoc:
    """A small JSON file read on a host: present or not, its sha256, its content or why not."""
    present: bool
    sha256: str | None = None
    data: object = None
    error: str | None = None

    @classmethod
    def from_json(cls, d):
        if not d:
            return cls(present=False)
        return cls(present=bool(d.get("present")), sha256=d.get("sha256"),
                   data=_freeze_json(d.get("data")), error=d.get("error"))


# --- dataset -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass(frozen=True)
class DataFile:
    """One JSONL split: lines, bytes, sha256, mlx-lm row format, the first bad row. ``checked``
    False: only summed on its host (``dataset --sums``), no row read: format and bad are unknown."""
    present: bool
    lines: int = 0
    bytes: int = 0
    sha256: str | None = None
    format: str | None = None
    bad: BadRow | None = None
    error: str | None = None
    checked: bool = True

    @classmethod
    def from_json(cls, d):
        bad = d.get("bad")
        return cls(present=bool(d.get("present")), lines=d.get("lines", 0), bytes=d.get("bytes", 0),
                   sha256=d.get("sha256"), format=d.get("format"),
                   bad=BadRow(bad["line"], bad["reason"]) if bad else None, error=d.get("error"),
                   checked=d.get("checked", True) is not False)


@dataclass(frozen=True)
class DatasetFacts:
    root: str
    exists: bool
    files: Mapping[str, DataFile]
    manifest: JsonDoc

    @classmethod
    def from_json(cls, d):
        return cls(root=d.get("root"), exists=bool(d.get("exists")),
                   files=_frozen(d.get("files"), DataFile.from_json), manifest=JsonDoc.from_json(d.get("manifest")))

    def file(self, name):
        """The split called ``name``; an absent one when the probe did not list it."""
        return self.files.get(name) or DataFile(present=False)


# --- HF cache ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotEntry:
    """One file of the snapshot: its link and blob (the etag), size (None if unreadable), link health.

    ``store`` is the shared-store entry (``blobs/<2 hex>/<xet hash>``, relative to the cache root) the
    repo blob links to, None for a blob kept in the repo folder; ``store_listed`` whether that entry's
    ``.refs`` lists the repo blob (None: not known). ``escapes`` is a link leaving the repo folder other
    than into the store, ``refusal`` says why it is refused."""
    link: str | None
    blob: str | None
    size: int | None
    dangling: bool
    escapes: bool
    store: str | None = None
    store_listed: bool | None = None
    refusal: str | None = None

    @classmethod
    def from_json(cls, d):
        return cls(d.get("link"), d.get("blob"), d.get("size"), bool(d.get("dangling")), bool(d.get("escapes")),
                   d.get("store"), d.get("store_listed"), d.get("refusal"))

    @property
    def key(self):
        """What holds the bytes: the store entry, else the blob; bytes are counted once per key."""
        return self.store or self.blob


@dataclass(frozen=True)
class SharedStore:
    """The hub root's ``blobs/`` folder: marked as huggingface_hub's shared store (marker version 1) or not."""
    marked: bool
    version: str | None = None


@dataclass(frozen=True)
class Leftover:
    """A blob an interrupted transfer left behind (``*.incomplete``, rsync's dot-temp files). ``blob``:
    the etag a hub ``*.incomplete`` was becoming; ``finished``: that blob is in place, so this one is an
    orphan of a killed download (the hub's client never reuses it)."""
    name: str
    size: int
    blob: str | None = None
    finished: bool = False


@dataclass(frozen=True)
class LockFile:
    """A file under ``.locks/``: huggingface_hub keeps one per blob after every download. ``held``: a
    process holds it now (a download is running in this cache)."""
    name: str
    age_s: int
    held: bool = False


@dataclass(frozen=True)
class Check:
    """A pass/fail with its reason: a shard's structure, a blob's re-hash."""
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class CacheFacts:
    cache_root: str
    resolved_by: str
    repo_dir: str
    exists: bool
    ref: str | None
    snapshot_exists: bool
    revisions: tuple
    files: Mapping[str, SnapshotEntry]
    blobs: Mapping[str, int]
    incomplete: tuple
    locks: tuple
    shards: Mapping[str, Check]
    index_error: str | None
    deep: Mapping[str, Check] | None
    shared_store: SharedStore | None = None
    linked: Mapping[str, int] = field(default_factory=_frozen)  # store-linked repo blobs: {etag: size}

    @classmethod
    def from_json(cls, d):
        deep, store = d.get("deep"), d.get("shared_store")
        return cls(
            cache_root=d["cache_root"], resolved_by=d.get("resolved_by", "inventory"), repo_dir=d["repo_dir"],
            exists=bool(d["exists"]), ref=d.get("ref"), snapshot_exists=bool(d.get("snapshot_exists")),
            revisions=tuple(d.get("revisions", ())), files=_frozen(d.get("files"), SnapshotEntry.from_json),
            blobs=_frozen(d.get("blobs")), incomplete=tuple(Leftover(i["name"], i["size"], i.get("blob"), bool(i.get("finished")))
                                              for i in d.get("incomplete", ())),
            locks=tuple(LockFile(lk["name"], lk["age_s"], bool(lk.get("held"))) for lk in d.get("locks", ())),
            shards=_frozen(d.get("shards"), lambda s: Check(s["ok"], s.get("reason"))),
            index_error=d.get("index_error"),
            deep=None if deep is None else _frozen(deep, lambda c: Check(c["ok"], c.get("actual"))),
            shared_store=None if store is None else SharedStore(bool(store.get("marked")), store.get("version")),
            linked=_frozen(d.get("linked")))  # absent from an older host's probe: none


# --- a run directory ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Versions:
    """An interpreter's version and platform, and {distribution: version or None} of the packages
    the probe was asked about (mlx and mlx-lm always, the host requirements' pins when given)."""
    python: str | None
    mlx: str | None
    mlx_lm: str | None
    platform: str | None = None
    packages: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))
    venv: bool | None = None  # the interpreter runs in a venv (sys.prefix != sys.base_prefix)

    @classmethod
    def from_json(cls, d):
        d = d or {}
        packages = {k: v for k, v in d.items() if k not in ("python", "platform", "venv")}
        return cls(d.get("python"), d.get("mlx"), d.get("mlx-lm"), d.get("platform"), _frozen(packages), d.get("venv"))


@dataclass(frozen=True)
class RunFile:
    """A file of a run directory, hashed; safetensors files also checked for structure."""
    size: int | None
    sha256: str
    whole: bool = True
    reason: str | None = None

    @classmethod
    def from_json(cls, d):
        return cls(d.get("size"), d["sha256"], d.get("whole", True), d.get("reason"))


@dataclass(frozen=True)
class Rank:
    """A training rank's recorded PID on one host, and whether it still runs."""
    file: str
    pid: int
    alive: bool


@dataclass(frozen=True)
class RunFacts:
    """One host's run directory: versions, free disk, checkpoint.json, files, running ranks."""
    run_dir: str
    exists: bool
    versions: Versions
    free_bytes: int | None
    checkpoint: JsonDoc
    files: Mapping[str, RunFile]
    ranks: tuple
    temp_files: tuple

    @classmethod
    def from_json(cls, d):
        return cls(run_dir=d["run_dir"], exists=bool(d["exists"]), versions=Versions.from_json(d.get("versions")),
                   free_bytes=d.get("free_bytes"), checkpoint=JsonDoc.from_json(d.get("checkpoint")),
                   files=_frozen(d.get("files"), RunFile.from_json),
                   ranks=tuple(Rank(**r) for r in d.get("ranks", ())), temp_files=tuple(d.get("temp_files", ())))

    @property
    def running(self):
        """PIDs of this host's ranks that are still alive."""
        return [r.pid for r in self.ranks if r.alive]

    @property
    def record(self):
        """checkpoint.json's content when it is a readable mapping, else an empty one."""
        data = self.checkpoint.data
        return data if self.checkpoint.present and isinstance(data, Mapping) else MappingProxyType({})


@dataclass(frozen=True)
class Reaped:
    """What ``reap`` ended on one host, and any rank still alive after it."""
    ended: tuple
    left: tuple

    @classmethod
    def from_json(cls, d):
        return cls(tuple(Rank(**r) for r in d.get("ended", ())), tuple(Rank(**r) for r in d.get("left", ())))


# --- queries: the probe's command line and the parser of its answer -------------------------------

@dataclass(frozen=True)
class Query:
    args: tuple
    parse: Callable
    slow: bool = False  # re-reads whole files (a deep scan): ssh.deep_probe_timeout, not probe_timeout


def dataset(root, rows=True):
    """A dataset root's facts; ``rows`` False: lines, bytes and sha256 only, no row read."""
    return Query(("dataset", root, *(() if rows else ("--sums",))), DatasetFacts.from_json)


def cache(repo_id, cache_root=None, deep=False):
    """The repo's cache under ``cache_root``, or where the host's interpreter resolves it."""
    return Query(("cache", repo_id, cache_root or "-", *(("--deep",) if deep else ())), CacheFacts.from_json,
                 slow=deep)


def run(runs_root, run_name, dists=()):
    """A run directory's facts, with the versions of ``dists`` (the host requirements' names)."""
    return Query(("lane", runs_root, run_name, *dists), RunFacts.from_json)


def versions(dists=()):
    """The lane interpreter's version, platform and the versions of ``dists``."""
    return Query(("versions", *dists), Versions.from_json)


def reap(runs_root, run_name):
    return Query(("reap", runs_root, run_name), Reaped.from_json)
