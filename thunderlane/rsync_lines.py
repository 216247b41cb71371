"""Parsing what the sync launcher prints: rsync's per-file progress lines (rsync 3, 2.6.9,
openrsync), which line is which, and the launcher's closing ``sync: done:`` figures. Pure
functions only; :mod:`thunderlane.transfer` shows them to the operator (its docstring lists the
formats)."""
import re
from dataclasses import dataclass

PROGRESS = re.compile(
    r"^\s*(?P<bytes>\d[\d,.']*)\s+(?P<pct>\d{1,3})%"     # bytes of this file so far, its percent
    r"(?:\s+[\d.,]+\s*[kKMGT]?B/s)?"                     # rate (openrsync omits it under 1 KiB/s)
    r"\s+[\d?]+:[\d?]{2}:[\d?]{2}"                       # time left (time taken on the last line)
    r"(?P<last>\s+\((?:xfr|xfer)#\d+,\s*[a-z]+-ch(?:ec)?k=\d+/\d+\))?\s*$")
ERROR = re.compile(
    r"^(?:open)?rsync(?::| error| warning)|rsync error|^ssh:|Permission denied|No space left"
    r"|Disk quota exceeded|Read-only file system|Host key verification failed"
    r"|REMOTE HOST IDENTIFICATION HAS CHANGED|Connection (?:refused|closed|reset|timed out)"
    r"|closed by remote host|Could not resolve hostname|Broken pipe")
STATS = re.compile(
    r"^(?:Number of |Total |Literal data:|Matched data:|File list |sent \S+ bytes |total size is "
    r"|Transfer complete:|sending incremental file list|building file list|created directory)")
LAUNCHER = "sync: "
LEFTOVER = "sync: removed leftover "
DONE = "sync: done:"
DONE_LINE = re.compile(r"sync: done: file data sent (\w+) bytes(?: \(derived from (\d+) files itemized\))?, "
                       r"total sent (\w+) bytes")


@dataclass(frozen=True)
class FileProgress:
    """One rsync ``--progress`` line: bytes of the current file so far, its percent, and whether it
    is the file's last line (the one with ``(xfr#...)`` / ``(xfer#...)``)."""
    done: int
    percent: int
    last: bool


def parse_progress(line):
    """The :class:`FileProgress` of an rsync 3 / 2.6.9 / openrsync progress line, else None."""
    m = PROGRESS.match(line)
    if not m:
        return None
    digits = re.sub(r"\D", "", m["bytes"])  # 1,234,567 or 1.234.567 (locale) or 1234567
    return FileProgress(int(digits), int(m["pct"]), bool(m["last"]))


def classify(line):
    """What a line of launcher output is: 'progress', 'leftover' (the launcher's per-file cleanup
    chatter), 'launcher' (its other ``sync:`` lines), 'error', 'stats' (rsync's --stats and
    headers) or 'other' (mostly rsync's file list)."""
    if parse_progress(line):
        return "progress"
    if line.startswith(LEFTOVER):
        return "leftover"
    if line.startswith(LAUNCHER):
        return "launcher"
    if ERROR.search(line):
        return "error"
    if not line.strip() or STATS.match(line):
        return "stats"
    return "other"


@dataclass(frozen=True)
class Summary:
    """The launcher's closing figures; None where unknown. ``file_data_from`` says where
    ``literal_bytes`` came from: 'stats' (rsync's ``Literal data:``, summed over the passes by the
    launcher), 'itemized' (openrsync: the local sizes of the ``files`` rsync itemized as sent, added
    up by the launcher), 'progress' (the fallback :func:`progress_file_bytes`) or None."""
    literal_bytes: int | None
    total_sent: int | None
    file_data_from: str | None = None
    files: int | None = None

    @property
    def derivation(self):
        """How a file data figure that is not rsync's own was made, for the operator ('' if it is)."""
        if self.file_data_from == "itemized":
            return f" (derived from {self.files} files itemized)"
        return " (estimated from rsync's progress)" if self.file_data_from == "progress" else ""


def parse_summary(output):
    """The :class:`Summary` in the launcher's closing line ``sync: done: file data sent N bytes,
    total sent M bytes`` (N, M may be ``unknown``; N may be followed by ``(derived from K files
    itemized)``). When N is unknown, file data falls back to :func:`progress_file_bytes`."""
    found = DONE_LINE.findall(output)
    if not found:
        return Summary(None, None)
    literal, files, total = found[-1]
    literal, total = (int(x) if x.isdigit() else None for x in (literal, total))
    if literal is not None:
        return Summary(literal, total, "itemized", int(files)) if files else Summary(literal, total, "stats")
    counted = progress_file_bytes(output)
    return Summary(counted, total, None if counted is None else "progress")


def progress_file_bytes(output):
    """FALLBACK file data figure, for rsyncs whose stats do not say (openrsync): the sizes of the
    files whose final 100% progress line (the one with ``(xfer#...)``) the output shows. It counts
    whole files, so it exceeds rsync's Literal data when delta transfer reused part of a file, and
    it misses a file rsync printed no progress for. None when there is no such line at all: then
    "nothing sent" and "no progress printed" cannot be told apart."""
    ends = [p for p in map(parse_progress, re.split(r"[\r\n]", output))
            if p and p.last and p.percent == 100]
    return sum(p.done for p in ends) if ends else None
