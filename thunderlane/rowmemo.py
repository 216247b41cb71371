"""The memo of local's row verdicts: "rows are validated once, on local".

Local's rows are the reference every host's bytes are judged by, and parsing them (json.loads of
every row) is most of a verify-dataset. A file's verdict (lines, row format, first bad row) depends
only on its bytes and on the code that judges them, so it is kept on the control machine, under the
local runs root (``.row-memo/<sha256>.json``, beside the lane's other bookkeeping: it goes with the
runs root, and a lab or a test writes nowhere else), keyed by both: the file's sha256 and
:func:`validator` (a digest of the probe source and of the interpreter that runs it). A run on an
unchanged corpus sums local's files and reads their verdicts here; a change of bytes or of the
validator misses, and that run parses once and remembers. An entry that cannot be read, is not
what :func:`entry` writes, or whose keys differ is a miss: never trusted, only replaced.

Each remember prunes the folder (:func:`stale`): the entries of the files just judged stay, and of
the others the :data:`KEEP_RECENT` most recently used (a hit touches its entry); older ones are
unlinked, one atomic unlink each. Pruning is best effort: an entry removed under a concurrent run
is only that run's miss, and a prune that fails costs nothing but room.
"""
import hashlib
import json
import os
import re
from dataclasses import replace
from types import MappingProxyType

from .facts import BadRow
from .fsutil import atomic_write
from .layout import Local

SHA256 = re.compile(r"[0-9a-f]{64}")
ENTRY = re.compile(r"([0-9a-f]{64})\.json")
KEEP_RECENT = 32   # entries of other bytes kept: a few corpora (3 files each) and their recent edits


def stale(entries, current, keep=KEEP_RECENT):
    """The entry names to remove, of ``entries`` ({name: mtime}; names as :data:`ENTRY`): all but
    those of the ``current`` sha256s and the ``keep`` most recently used others, newest first."""
    others = sorted((n for n in entries if ENTRY.fullmatch(n).group(1) not in current),
                    key=lambda n: (entries[n], n), reverse=True)
    return others[keep:]


def validator(probe_source, python):
    """The digest of the validating code: the probe's source and the local interpreter's path."""
    return hashlib.sha256(f"{python}\0{probe_source}".encode()).hexdigest()


def entry(f, key):
    """The memo text of one checked, present file's verdict."""
    bad = {"line": f.bad.line, "reason": f.bad.reason} if f.bad else None
    return json.dumps({"sha256": f.sha256, "validator": key, "lines": f.lines, "bytes": f.bytes,
                       "format": f.format, "bad": bad}, sort_keys=True) + "\n"


def verdict(text, f, key):
    """The remembered (format, bad) of summed file ``f`` from memo ``text``, or None: unreadable,
    malformed, or keyed by other bytes or another validator."""
    try:
        d = json.loads(text)
        bad = d["bad"]
        if (d["sha256"], d["validator"], d["lines"], d["bytes"]) != (f.sha256, key, f.lines, f.bytes):
            return None
        if not (d["format"] is None or isinstance(d["format"], str)):
            return None
        if bad is not None and not (type(bad["line"]) is int and isinstance(bad["reason"], str)):
            return None
        return d["format"], BadRow(bad["line"], bad["reason"]) if bad else None
    except (ValueError, TypeError, KeyError):
        return None


class Memo:
    """The memo folder of one control machine's runs root, for one validator."""

    def __init__(self, runs_root, key):
        self.folder, self.key = Local(runs_root).row_memo(), key

    def _path(self, sha256):
        return self.folder / f"{sha256}.json"

    def recall(self, facts):
        """``facts`` (summed) with each file whose verdict is remembered taking it (``checked``)."""
        files = {}
        for name, f in facts.files.items():
            if f.present and not f.checked and SHA256.fullmatch(f.sha256 or ""):
                try:
                    found = verdict(self._path(f.sha256).read_text(encoding="utf-8"), f, self.key)
                except (OSError, UnicodeDecodeError):
                    found = None
                if found:
                    f = replace(f, format=found[0], bad=found[1], checked=True)
                    self._touch(f.sha256)
            files[name] = f
        return replace(facts, files=MappingProxyType(files))

    def remember(self, facts):
        """Keep the verdict of each present, row-checked file of ``facts`` (atomically, one file each).
        A memo that cannot be written costs the next run a parse, never this run's verdict."""
        for f in facts.files.values():
            if f.present and f.checked and SHA256.fullmatch(f.sha256 or ""):
                try:
                    atomic_write(self._path(f.sha256), entry(f, self.key))
                except OSError:
                    pass
        self.prune({f.sha256 for f in facts.files.values() if f.present and f.sha256})

    def _touch(self, sha256):
        """Mark a hit's entry as just used (its mtime), for :meth:`prune`; best effort."""
        try:
            os.utime(self._path(sha256), follow_symlinks=False)
        except (OSError, NotImplementedError):
            pass

    def prune(self, current, keep=KEEP_RECENT):
        """Unlink the :func:`stale` entries (regular files or links named as entries; nothing else in
        the folder is touched). Returns the names removed; a failure removes less, never raises."""
        removed = []
        for name in stale(self._entries(), current, keep):
            try:
                os.unlink(self.folder / name)
                removed.append(name)
            except OSError:
                pass
        return removed

    def _entries(self):
        """{name: mtime} of the folder's entries (files or links named as entries; no folder)."""
        found = {}
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    try:
                        if ENTRY.fullmatch(e.name) and not e.is_dir(follow_symlinks=False):
                            found[e.name] = e.stat(follow_symlinks=False).st_mtime
                    except OSError:   # gone meanwhile (another run's prune)
                        pass
        except OSError:
            pass
        return found
