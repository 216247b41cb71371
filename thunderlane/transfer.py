"""What the operator sees while the sync launcher sends a cache: one live progress line per host.

The launcher runs rsync three times (blobs, snapshots, the rest) with ``--stats --progress``: some
60 lines of file lists and stats. Here the three passes are one transfer, shown as one line (bytes
done of the bytes the host was missing, rate, ETA), rewritten in place on a terminal and printed
every few seconds in a log. The launcher's own ``sync:`` lines and anything that looks like an
error still come through; ``verbose`` shows everything as it comes.

Per-file progress lines differ a little between the rsyncs a Mac may have (the local rsync prints
them):

    rsync 3      "\r      3,000,000 100%    1.01MB/s    0:00:02 (xfr#1, to-chk=1/3)\n"
    rsync 2.6.9  "     3000000 100%    1.01MB/s    0:00:02 (xfer#1, to-check=1/3)\n"
    openrsync    "        3000000 100%    1.01MB/s   00:00:02 (xfer#1, to-check=1/3)\n"
                 (openrsync prints no rate at all under 1 KiB/s; its rates are KB/s, MB/s, GB/s)

(rsync's progress.c; openrsync's client.c progress function, whose format Apple's build carries.)

In-flight updates end with ``\r`` and carry no ``(xfr#...)`` suffix; the suffixed line is a file's
last. Lines that parse as none of this are left alone. Parsing and formatting are pure functions;
:func:`stream` is the only thing here that runs a process.
"""
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from . import procgroup
from .report import human_bytes
from .rsync_lines import DONE, classify, parse_progress

TTY_EVERY = 0.2     # seconds between rewrites of the progress line on a terminal
LOG_EVERY = 10.0    # seconds between progress lines when the output is not a terminal
VERBOSE_EVERY = 2.0  # seconds between rsync's in-place updates echoed to a log with verbose
RATE_AFTER = 1.0    # seconds of transfer before a rate and an ETA mean something
TAIL = 10           # hidden lines shown after a failed exit

# ---- formatting ----------------------------------------------------------------------------

def clock_time(seconds):
    """3725.4 -> '1:02:05'."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def percent(done, expected):
    """Whole percent of ``expected`` done, at most 100 (100 when nothing was expected)."""
    if expected <= 0:
        return 100
    return min(100, done * 100 // expected)


def format_progress(done, expected, elapsed, final=False):
    """'sending 1.2 MiB of 2.0 MiB (60%), 3.4 MiB/s, ETA 0:00:01'; with ``final``
    'sent 2.0 MiB of 2.0 MiB (100%), 3.4 MiB/s, in 0:00:01'. The rate is the average since the
    transfer began (left out, and the ETA '-', in its first RATE_AFTER seconds: too early to say);
    the ETA is what is left of ``expected`` at that rate. With nothing expected (a --checksum
    repair of files the host had) only the bytes and the rate are shown."""
    parts = [f"{human_bytes(done)} of {human_bytes(expected)} ({percent(done, expected)}%)"
             if expected else human_bytes(done)]
    known = elapsed > 0 if final else elapsed >= RATE_AFTER
    rate = done / elapsed if known else 0.0
    if known:
        parts.append(f"{human_bytes(rate)}/s")
    if final:
        return f"sent {', '.join(parts)}, in {clock_time(elapsed)}"
    if expected:
        left = max(0, expected - done)
        parts.append("ETA " + ("0:00:00" if not left else clock_time(left / rate) if rate > 0 else "-"))
    return "sending " + ", ".join(parts)


# ---- one host's output, a line at a time -----------------------------------------------------

class Meter:
    """Bytes sent over all passes: the files whose last progress line came, plus the one in flight."""

    def __init__(self):
        self.finished = 0
        self.current = 0

    @property
    def done(self):
        return self.finished + self.current

    def feed(self, p):
        """Count one :class:`FileProgress`."""
        if p.last:
            self.finished += p.done
            self.current = 0
            return
        if p.done < self.current:  # a new file began without a last line for the previous one
            self.file_ended()
        self.current = p.done

    def file_ended(self):
        """Another line came (a file name, stats): a file in flight without a last line is over."""
        self.finished += self.current
        self.current = 0


class Screen:
    """Writes one host's lines to ``out``: whole messages, and the progress line, which on a
    terminal is rewritten in place (at most every TTY_EVERY s) and elsewhere printed at most every
    LOG_EVERY s, counted from the start of the transfer, plus once at the end."""

    def __init__(self, out, host, expected, clock):
        self.out, self.host, self.expected, self.clock = out, host, expected, clock
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.every = TTY_EVERY if self.tty else LOG_EVERY
        self.started = None     # when rsync began talking
        self.shown_at = None    # when the progress line was last written
        self.width = 0          # length of the unfinished progress line on the terminal
        self.pending = False    # progress seen since the last final line

    def start(self):
        """The transfer begins now (first output that is not the launcher's own)."""
        if self.started is None:
            self.started = self.clock()
            self.shown_at = None if self.tty else self.started

    def message(self, text):
        """A whole line, after wiping an unfinished progress line off the terminal."""
        if self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.width, self.shown_at = 0, None
        self._write(f"[{self.host}] {text}\n")

    def update(self, done):
        """The progress line, if it is due."""
        self.start()
        self.pending = True
        now = self.clock()
        if self.shown_at is None or now - self.shown_at >= self.every:
            self._progress(format_progress(done, self.expected, now - self.started), now)

    def finish(self, done):
        """The last progress line of the transfer, ended with a newline; nothing if none was due."""
        if not self.pending:
            return
        now = self.clock()
        self._progress(format_progress(done, self.expected, now - self.started, final=True), now)
        if self.tty:
            self._write("\n")
        self.width, self.pending = 0, False

    def _progress(self, text, now):
        line = f"[{self.host}] {text}"
        if self.tty:
            self._write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self._write(line + "\n")
        self.shown_at = now

    def _write(self, text):
        self.out.write(text)
        self.out.flush()


class Watch:
    """The non-verbose view of one host's launcher output, fed a line at a time: the launcher's
    lines (its per-file cleanup lines folded into one), errors, and one progress line. rsync's file
    list and stats stay hidden; if the launcher fails, the last few hidden lines of the pass that
    failed are shown."""

    def __init__(self, screen):
        self.screen = screen
        self.meter = Meter()
        self.leftovers = 0
        self.hidden = deque(maxlen=TAIL)

    def line(self, text, sep="\n"):
        """One line of output (``sep`` is how it ended: '\\r' or '\\n'; unused here)."""
        if not text.strip():
            return
        kind = classify(text)
        if kind != "leftover":
            self._fold_leftovers()
        if kind not in ("launcher", "leftover"):
            self.screen.start()
        if kind == "progress":
            self.meter.feed(parse_progress(text))
            self.screen.update(self.meter.done)
        elif kind == "leftover":
            self.leftovers += 1
        elif kind in ("launcher", "error"):
            if text.startswith(DONE):
                self.screen.finish(self.meter.done)
            self.screen.message(text)
        else:
            self.meter.file_ended()
            if kind == "stats":  # a pass begins or ends: what came before it is no clue
                self.hidden.clear()
            else:
                self.hidden.append(text)

    def close(self, code):
        """The launcher exited with ``code``: end the progress line; after a failure, show the last
        hidden lines (ssh and remote shells say things no pattern here knows)."""
        self._fold_leftovers()
        self.screen.finish(self.meter.done)
        for text in self.hidden if code else ():
            self.screen.message(text)

    def _fold_leftovers(self):
        if self.leftovers:
            self.screen.message(f"removed {self.leftovers} leftover file(s)")
            self.leftovers = 0


class Echo:
    """The verbose view: every line as it comes, prefixed by host. rsync's in-place updates are
    rewritten on a terminal and echoed at most every VERBOSE_EVERY s to a log."""

    def __init__(self, out, host, clock):
        self.out, self.host, self.clock = out, host, clock
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.last = None

    def line(self, text, sep="\n"):
        if not text:
            return
        if sep == "\r":
            now = self.clock()
            if not self.tty and self.last is not None and now - self.last < VERBOSE_EVERY:
                return
            self.last = now
            self.out.write(f"[{self.host}] {text}" + ("\r" if self.tty else "\n"))
        else:
            self.out.write(f"[{self.host}] {text}\n")
        self.out.flush()

    def close(self, code):
        pass


# ---- running the launcher ------------------------------------------------------------------

def records(pipe, keep, over=None):
    """(text, ending) for each line of ``pipe`` as it arrives, split at '\\r' and '\\n' (ending ''
    for an unterminated last line). Every raw chunk is appended to ``keep``. ``over``: a callable
    that says when to stop short of end-of-file (see :func:`chunks`)."""
    buf = b""
    for chunk in chunks(pipe, over):
        keep.append(chunk)
        parts = re.split(rb"(\r|\n)", buf + chunk)
        buf = parts.pop()
        for text, sep in zip(parts[::2], parts[1::2]):
            yield text.decode("utf-8", "replace"), sep.decode()
    if buf:
        yield buf.decode("utf-8", "replace"), ""


def chunks(pipe, over=None):
    """The raw chunks of ``pipe`` until end-of-file or, with ``over``, until ``over()`` is true:
    then what is already in the pipe is read and no more (a process that outlived the launcher, an
    ssh master, may hold the pipe open long after the launcher's last word)."""
    if over is None or not hasattr(pipe, "fileno"):
        read = pipe.read1 if hasattr(pipe, "read1") else (lambda n: pipe.read(min(n, 4096)))
        yield from iter(lambda: read(65536), b"")
        return
    fd = pipe.fileno()   # read unbuffered: select sees only what the pipe holds
    while not over():
        if select.select([fd], [], [], POLL)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            yield chunk
    for _ in range(DRAIN_READS):
        chunk = os.read(fd, 65536) if select.select([fd], [], [], 0)[0] else b""
        if not chunk:
            return
        yield chunk


def exited_for(proc, seconds, clock=time.monotonic):
    """A callable, true once ``proc`` has exited ``seconds`` ago or more (as first seen); its
    ``fired`` says whether it has been true."""
    seen = []

    def over():
        if not seen and proc.poll() is not None:
            seen.append(clock())
        over.fired = over.fired or (bool(seen) and clock() - seen[0] >= seconds)
        return over.fired
    over.fired = False
    return over


# What stream() returns as the exit code when it stopped a launcher that fell silent: rsync's own
# code for "timeout in data send/receive".
SILENT_EXIT = 30
GRACE = 5.0  # seconds the launcher's trap gets, once stopped, before its group is killed
AFTER_EXIT = 2.0  # seconds the output is still read once the launcher itself has exited
POLL = 0.2        # seconds between looks at the launcher while its output is quiet
DRAIN_READS = 64  # reads of what is left in the pipe, at most, once AFTER_EXIT is over


def stream(argv, host, expected_bytes, out=sys.stdout, verbose=False, clock=time.monotonic, silence=None, proc=None):
    """Run ``argv`` (the sync launcher) and show its output to the operator as it comes: with
    ``verbose`` every line prefixed ``[host]``, else the launcher's own lines, errors and one
    progress line against ``expected_bytes`` (the bytes the host is missing). ``clock`` times the
    progress line. ``silence``: seconds without any output after which the launcher is stopped
    (its trap closes ssh) and the exit code is :data:`SILENT_EXIT`; rsync's own ``--timeout``
    does not fire while the host's sshd still takes rsync's keepalives, e.g. when the host's rsync
    or disk hangs. ``proc``: ``argv`` already started (as here: its output on one pipe, a session of
    its own). Returns (exit code, the whole output with '\\r' updates as lines of their own)."""
    sink = Echo(out, host, clock) if verbose else Watch(Screen(out, host, expected_bytes, clock))
    raw, fell_silent = [], []
    # a session of its own: the watchdog stops the launcher's whole group (rsync, ssh, tee), whose
    # members would otherwise keep the pipe open after the launcher itself is gone
    proc = proc or subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if silence:
        threading.Thread(target=_stop_if_silent, args=(proc, raw, silence, fell_silent), daemon=True).start()
    try:
        # a process that outlives the launcher (an ssh master waiting out its keepalives) may hold
        # the pipe: its end-of-file is not waited for past AFTER_EXIT
        over = exited_for(proc, AFTER_EXIT)
        for text, sep in records(proc.stdout, raw, over=over):
            sink.line(text, sep)
        if over.fired:  # what is left of the launcher's group (rsync, tee, a tree listing) ends with it;
            _end_group(proc)  # an ssh master runs in a session of its own, out of reach
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: let the launcher's trap close ssh and remove its logs
            _stop_group(proc, grace=10)
        proc.stdout.close()
    if fell_silent:
        code = SILENT_EXIT
        raw.append(f"\nsync: no output for {silence}s: stopped it (the host stopped answering?)\n".encode())
        sink.line(f"sync: no output for {silence}s: stopped it (the host stopped answering?)", "\n")
    sink.close(code)
    text = b"".join(raw).decode("utf-8", "replace")
    return code, text.replace("\r\n", "\n").replace("\r", "\n")


def _stop_if_silent(proc, raw, silence, fired):
    """SIGTERM ``proc`` once ``raw`` (its output chunks) has not grown for ``silence`` seconds."""
    seen, since = 0, time.monotonic()
    while proc.poll() is None:
        time.sleep(min(1.0, silence / 4))
        if len(raw) != seen:
            seen, since = len(raw), time.monotonic()
        elif time.monotonic() - since > silence:
            fired.append(True)
            _stop_group(proc)
            return


def _end_group(proc):
    """SIGTERM what is left of the launcher's process group, once the launcher itself has exited,
    and SIGKILL it if it still lives a moment later: only while the group is seen alive, since the
    launcher's pid (the group's id) is free again once the group is gone (:mod:`.procgroup`)."""
    procgroup.end_leftovers(proc.pid)


def _stop_group(proc, grace=GRACE):
    """SIGTERM the launcher's process group (its trap closes ssh), then SIGKILL whatever of it is
    left after ``grace`` seconds: nothing of it may keep the output pipe, and so fab, waiting. Once
    the launcher is reaped its pid (the group's id) is free when the group is gone: what is left
    then ends as :func:`_end_group` ends it, and only if a look finds the group still alive."""
    if not procgroup.signal_group(proc.pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:  # the launcher lives on, unreaped: its pid is still the group's id
        procgroup.signal_group(proc.pid, signal.SIGKILL)
    elif procgroup.signal_group(proc.pid, 0):
        procgroup.end_leftovers(proc.pid)
