"""The sync launcher's output, condensed: rsync 3 / 2.6.9 / openrsync progress and stats parsed,
one progress line per host shown, the closing figures read (and the launcher's summing of them)."""
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thunderlane.rsync_lines import (
    FileProgress, Summary, classify, parse_progress, parse_summary, progress_file_bytes,
)
from thunderlane.transfer import Meter, Screen, Watch, clock_time, format_progress, percent, stream

LAUNCHER = Path(__file__).resolve().parents[2] / "launchers" / "sync_gemma4_e2b_cache_to_thunder.sh"
REPO = "/Users/op/.cache/huggingface/hub/models--mlx-community--gemma-4-e2b-4bit"
BLOBS = [(f"{i:02x}" * 32, 40_000 * i + 1_000) for i in range(1, 13)]   # 12 blobs, 40 KB .. 481 KB
LINKS = [f"abc123/model-{i:05d}.safetensors" for i in range(1, 8)] + ["abc123/config.json"]
MISSING = sum(size for _, size in BLOBS)


# ---- canned outputs, shaped like the real thing (rsync 3 recorded from rsync 3.5.0) ---------------

def rsync3_pass(files, links=()):
    """One rsync 3 pass with -i --progress --stats: itemized names (YXcstpoguax, rsync 3's rsync.1),
    '\\r' updates, (xfr#, to-chk), stats (main.c output_summary())."""
    out, n = ["sending incremental file list\n", "cd+++++++++ ./\n"], len(files) + len(links) + 1
    for i, (name, size) in enumerate(files, 1):
        first = min(32_768, size // 4)
        out.append(f"<f+++++++++ {name}\n\r{first:>15,} {first * 100 // size:>3}%    0.00kB/s    0:00:00  ")
        out.append(f"\r{size // 2:>15,}  50%    1.00MB/s    0:00:01  ")
        out.append(f"\r{size:>15,} 100%    1.01MB/s    0:00:02 (xfr#{i}, to-chk={n - i - 1}/{n})\n")
    out += [f"cL+++++++++ {link} -> ../../blobs/x\n" for link in links]
    sent = sum(s for _, s in files)
    out.append(f"\nNumber of files: {n} (reg: {len(files)}, dir: 1)\nNumber of created files: {len(files)}\n"
               f"Number of deleted files: 0\nNumber of regular files transferred: {len(files)}\n"
               f"Total file size: {sent:,} bytes\nTotal transferred file size: {sent:,} bytes\n"
               f"Literal data: {sent:,} bytes\nMatched data: 0 bytes\nFile list size: 0\n"
               f"File list generation time: 0.001 seconds\nFile list transfer time: 0.000 seconds\n"
               f"Total bytes sent: {sent + 888:,}\nTotal bytes received: 89\n\n"
               f"sent {sent + 888:,} bytes  received 89 bytes  857,707.71 bytes/sec\n"
               f"total size is {sent:,}  speedup is 1.00\n")
    return "".join(out)


def rsync269_pass(files, links=()):
    """rsync 2.6.9: itemized names of 9 letters (YXcstpogz, its rsync.1), no separators, updates
    end in '\\r' (progress.c), (xfer#, to-check=), shorter stats (main.c output_summary(): plain
    "%.0f" numbers, "Total bytes sent:")."""
    out, n = ["building file list ... done\n"], len(files) + len(links) + 1
    for i, (name, size) in enumerate(files, 1):
        out.append(f"<f+++++++ {name}\n{size // 2:>12}  50%    1.00MB/s    0:00:01\r")
        out.append(f"{size:>12} 100%    1.01MB/s    0:00:02 (xfer#{i}, to-check={n - i - 1}/{n})\n")
    out += [f"cL+++++++ {link} -> ../../blobs/x\n" for link in links]
    sent = sum(s for _, s in files)
    out.append(f"\nNumber of files: {n}\nNumber of files transferred: {len(files)}\n"
               f"Total file size: {sent} bytes\nTotal transferred file size: {sent} bytes\n"
               f"Literal data: {sent} bytes\nMatched data: 0 bytes\nFile list size: 61\n"
               f"File list generation time: 0.001 seconds\nFile list transfer time: 0.000 seconds\n"
               f"Total bytes sent: {sent + 434}\nTotal bytes received: 70\n\n"
               f"sent {sent + 434} bytes  received 70 bytes  6003008.00 bytes/sec\n"
               f"total size is {sent}  speedup is 1.00\n")
    return "".join(out)


def openrsync_pass(files, links=()):
    """openrsync: itemized names (its tests match '^.[dfLS]\\+{7,} '), 2.6.9-like progress (no rate
    under 1 KiB/s), no stats block at all even with --stats; with -v only, one rounded line
    (session.c stats_log(), kristapsdz/openrsync and KlaraSystems/openrsync: "%.*lf %s" in B/KB/MB/GB)."""
    out, n = [], len(files) + len(links) + 1
    for i, (name, size) in enumerate(files, 1):
        out.append(f"<f+++++++ {name}\n {size // 2:>14}  50%   00:00:01\r")
        out.append(f" {size:>14} 100%    1.01MB/s   00:00:02 (xfer#{i}, to-check={n - i - 1}/{n})\n")
    out += [f"cL+++++++ {link} -> ../../blobs/x\n" for link in links]
    out.append("Transfer complete: 2.86 MB sent, 0 B read, 2.86 MB file size\n")
    return "".join(out)


def launcher_output(make_pass, done_line):
    """The whole launcher run for ``mac4``: its own lines, the three passes, the closing line."""
    passes = launcher_passes(make_pass)
    return (f"sync: {REPO} -> mac4:{REPO} (revision abc123)\n"
            f"sync: removed leftover {REPO}/blobs/{'ab' * 32}.incomplete\n"
            f"sync: removed leftover {REPO}/blobs/.{'cd' * 32}.Xy12Zq\n"
            + "".join(passes) + done_line + "\n")


def launcher_passes(make_pass):
    return [make_pass(BLOBS), make_pass([], LINKS), make_pass([("refs/main", 40)])]


def launcher_done_line(passes, tmp_path, repo=None):
    """The launcher's own closing line for these pass outputs: its file_data and sum_stat, run by
    bash; ``repo`` is the local repo folder whose files the passes name (default: none there)."""
    logs = []
    for i, text in enumerate(passes, 1):
        logs.append(tmp_path / f"pass{i}")
        logs[-1].write_text(text)
    repo = repo or tmp_path / "no-repo"
    return "sync: done: file data sent {}, total sent {} bytes".format(
        launcher_function("file_data", "Literal data:", repo / "blobs", logs[0], repo / "snapshots", logs[1],
                          repo, logs[2]),
        sum_stat("Total bytes sent:", *logs))


def launcher_function(name, *args):
    """One of the launcher's byte-counting functions (with those it calls), cut out of it and run alone."""
    text = LAUNCHER.read_text()
    names = "sum_stat|pass_derived|sum_derived|file_data"
    functions = "".join(re.findall(rf"^(?:{names})\(\) \{{.*?^\}}\n", text, re.M | re.S))
    assert all(f"{n}()" in functions for n in names.split("|"))
    p = subprocess.run(["bash", "-c", functions + f'{name} "$@"', "bash", *map(str, args)],
                       capture_output=True, text=True, check=True)
    return p.stdout.strip()


def sum_stat(label, *logs):
    return launcher_function("sum_stat", label, *logs)


def local_repo(tmp_path):
    """A local repo folder holding the files the canned passes send (blobs at their sizes, refs/main)."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for name, size in BLOBS:
        (repo / "blobs" / name).write_bytes(b"x" * size)
    (repo / "refs" / "main").write_bytes(b"r" * 40)
    return repo


class Ticking:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def watch(output, clock, out=None, code=0, expected=MISSING):
    """Feed ``output`` to the non-verbose view as :func:`stream` would; what ``out`` got."""
    out = out if out is not None else io.StringIO()
    w = Watch(Screen(out, "mac4", expected, clock))
    for text in re.split(r"[\r\n]", output):
        w.line(text)
    w.close(code)
    return out.getvalue()


# ---- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line,expected", [
    ("         32,768   1%    0.00kB/s    0:00:00  ", FileProgress(32_768, 1, False)),
    ("      3,000,000 100%    1.01MB/s    0:00:02 (xfr#1, to-chk=1/3)", FileProgress(3_000_000, 100, True)),
    ("    262,144,000  25%   50.00MB/s    0:00:15 (xfr#4, ir-chk=1010/1040)", FileProgress(262_144_000, 25, True)),
    ("      1.234.567  45%    1,23MB/s    0:00:01  ", FileProgress(1_234_567, 45, False)),   # de_DE
    ("         32,768   0%    0.00kB/s  ??:??:??  ", FileProgress(32_768, 0, False)),
    ("     3000000 100%    1.01MB/s    0:00:02 (xfer#1, to-check=1/3)", FileProgress(3_000_000, 100, True)),
    ("     1500000  50%    1.01MB/s    0:00:01", FileProgress(1_500_000, 50, False)),
    ("        3000000 100%    1.01MB/s   00:00:02 (xfer#2, to-check=0/3)", FileProgress(3_000_000, 100, True)),
    ("            512  50%   00:00:01", FileProgress(512, 50, False)),   # openrsync, no rate
    # openrsync's client.c: " %14llu", " %3.0f%%", " %7.2fKB/s" (MB/s, GB/s; none under 1 KiB/s)
    ("         524288  50%  512.00KB/s   00:00:01", FileProgress(524_288, 50, False)),
    ("     3221225472 100%    1.50GB/s   00:00:02 (xfer#1, to-check=0/3)", FileProgress(3_221_225_472, 100, True)),
])
def test_progress_lines_of_every_rsync_parse(line, expected):
    assert parse_progress(line) == expected


@pytest.mark.parametrize("line", [
    "", "blobs/0101", "Total bytes sent: 3,001,888",
    "sent 3,001,888 bytes  received 89 bytes  857,707.71 bytes/sec",
    "100% done", "Transfer complete: 2.86 MB sent, 0 B read, 2.86 MB file size", "12 50% fast 0:00:01",
])
def test_other_lines_are_not_progress(line):
    assert parse_progress(line) is None


@pytest.mark.parametrize("line,kind", [
    (" 3000000 100%    1.01MB/s    0:00:02 (xfer#1, to-check=1/3)", "progress"),
    (f"sync: removed leftover {REPO}/blobs/x.incomplete", "leftover"),
    ("sync: done: file data sent 1 bytes, total sent 2 bytes", "launcher"),
    ('rsync: [receiver] write failed on "x": No space left on device (28)', "error"),
    ("rsync error: some files/attrs were not transferred (code 23) at main.c(1338) [sender=3.2.7]", "error"),
    ("rsync warning: some files vanished before they could be transferred (code 24)", "error"),
    ("openrsync: error: connection closed", "error"),
    ("ssh: connect to host mac4 port 22: Connection refused", "error"),
    ("op@mac4: Permission denied (publickey).", "error"),
    ("Host key verification failed.", "error"),
    ("Connection to 198.18.0.4 closed by remote host.", "error"),
    ("Literal data: 1,234 bytes", "stats"), ("Number of files: 3 (reg: 2, dir: 1)", "stats"),
    ("Transfer complete: 2.86 MB sent, 0 B read, 2.86 MB file size", "stats"), ("", "stats"),
    ("sending incremental file list", "stats"), ("blobs/0101", "other"),
])
def test_lines_are_classified(line, kind):
    assert classify(line) == kind


def test_summary_of_rsync3_is_rsyncs_literal_data(tmp_path):
    done = launcher_done_line(launcher_passes(rsync3_pass), tmp_path)
    assert done == f"sync: done: file data sent {MISSING + 40} bytes, total sent {MISSING + 40 + 3 * 888} bytes"
    assert parse_summary(launcher_output(rsync3_pass, done)) == Summary(MISSING + 40, MISSING + 40 + 2664, "stats")


def test_summary_of_rsync269_is_its_literal_data(tmp_path):
    done = launcher_done_line(launcher_passes(rsync269_pass), tmp_path)
    assert parse_summary(launcher_output(rsync269_pass, done)) == \
        Summary(MISSING + 40, MISSING + 40 + 3 * 434, "stats")


def test_openrsync_file_data_is_derived_from_the_files_itemized_as_sent(tmp_path):
    done = launcher_done_line(launcher_passes(openrsync_pass), tmp_path, local_repo(tmp_path))
    n = len(BLOBS) + 1   # the blobs and refs/main; the snapshot links are not file data
    assert done == (f"sync: done: file data sent {MISSING + 40} bytes (derived from {n} files itemized), "
                    "total sent unknown bytes")
    summary = parse_summary(launcher_output(openrsync_pass, done))
    assert summary == Summary(MISSING + 40, None, "itemized", n)
    assert summary.derivation == f" (derived from {n} files itemized)"


def test_openrsync_without_the_local_files_is_unknown_then_counted_from_progress(tmp_path):
    """A name the launcher cannot size here (gone, or written with rsync's \\#ooo escapes) is
    no guess: the figure falls back to the progress lines, said to be an estimate."""
    done = launcher_done_line(launcher_passes(openrsync_pass), tmp_path)
    assert done == "sync: done: file data sent unknown bytes, total sent unknown bytes"
    summary = parse_summary(launcher_output(openrsync_pass, done))
    assert summary == Summary(MISSING + 40, None, "progress")
    assert summary.derivation == " (estimated from rsync's progress)"


@pytest.mark.parametrize("line,counted", [
    ("<f+++++++++ blobs/0101", True),       # rsync 3, pushed (YXcstpoguax)
    (">f+++++++++ blobs/0101", True),       # rsync 3, pulled
    ("<f+++++++ blobs/0101", True),         # rsync 2.6.9 (YXcstpogz) / openrsync
    ("<f.st...... blobs/0101", True),       # an update: size and time differ
    ("<f..T.... blobs/0101", True),
    (".f..t...... blobs/0101", False),      # not sent: only its time is set
    ("cL+++++++++ abc/config.json -> ../../blobs/0101", False),
    ("cd+++++++++ ./", False), ("*deleting   blobs/0101", False),
    ("blobs/0101", False), ("<f+++ blobs/0101", False),
])
def test_only_regular_files_itemized_as_sent_count(tmp_path, line, counted):
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "0101").write_bytes(b"x" * 1234)
    log = tmp_path / "log"
    log.write_text(f"sending incremental file list\n{line}\n   1,234 100%  1.00MB/s  0:00:00 (xfr#1, to-chk=0/1)\n")
    assert launcher_function("pass_derived", tmp_path, log) == ("1234 1" if counted else "0 0")


def test_rsync3_stats_win_over_the_itemized_derivation(tmp_path):
    done = launcher_done_line(launcher_passes(rsync3_pass), tmp_path, local_repo(tmp_path))
    assert "derived" not in done and parse_summary(done).file_data_from == "stats"


def test_unknown_without_any_progress_stays_unknown():
    out = "sync: x -> mac4:y (revision r)\nsync: done: file data sent unknown bytes, total sent unknown bytes\n"
    assert parse_summary(out) == Summary(None, None, None)
    assert parse_summary("sync: no usable rsync on mac4\n") == Summary(None, None, None)


def test_progress_count_takes_each_files_final_line_once():
    out = rsync3_pass([("a", 100_000), ("b", 2_000)]) + "c\n     5000  50%    1.00MB/s    0:00:01\r"
    assert progress_file_bytes(out) == 102_000   # c never finished


@pytest.mark.parametrize("logs,expected", [
    (["Literal data: 1,000 bytes\n", "Literal data: 0 bytes\n", "Literal data: 24 bytes\n"], "1024"),
    (["Literal data: 1000 bytes\n"] * 3, "3000"),
    (["Literal data: 1,000 bytes\n", "Transfer complete: 1 KB sent\n", "Literal data: 24 bytes\n"], "unknown"),
    (["Literal data: 1.23M bytes\n"] * 3, "unknown"),       # human-readable: not a byte count
    (["Literal data: 5 bytes\nLiteral data: 6 bytes\n"] + ["Literal data: 1 bytes\n"] * 2, "unknown"),
    ([""] * 3, "unknown"),
])
def test_launcher_sums_a_figure_only_when_every_pass_has_it(tmp_path, logs, expected):
    paths = []
    for i, text in enumerate(logs):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_text(text)
    assert sum_stat("Literal data:", *paths) == expected


# ---- formatting --------------------------------------------------------------------------------

def test_progress_line_format():
    mib = 1024 * 1024
    assert format_progress(7_130_317, 11_883_861, 2.0) == \
        "sending 6.8 MiB of 11.3 MiB (60%), 3.4 MiB/s, ETA 0:00:01"
    assert format_progress(1_258_292, 2 * mib, 0.35) == "sending 1.2 MiB of 2.0 MiB (60%), ETA -"  # too early
    assert format_progress(4 * mib, 40 * mib, 1.0) == "sending 4.0 MiB of 40.0 MiB (10%), 4.0 MiB/s, ETA 0:00:09"
    assert format_progress(0, 34 * mib, 5.0) == "sending 0 B of 34.0 MiB (0%), 0 B/s, ETA -"
    assert format_progress(2 * mib, 2 * mib, 4.0, final=True) == \
        "sent 2.0 MiB of 2.0 MiB (100%), 512.0 KiB/s, in 0:00:04"


def test_percent_is_capped_and_eta_never_negative():
    assert percent(150, 100) == 100 and percent(99, 100) == 99 and percent(5, 0) == 100
    assert format_progress(3000, 1000, 2.0).endswith("(100%), 1.5 KiB/s, ETA 0:00:00")
    assert format_progress(5 * 1024 * 1024, 0, 2.0) == "sending 5.0 MiB, 2.5 MiB/s"   # nothing expected
    assert format_progress(5 * 1024 * 1024, 0, 2.0, final=True) == "sent 5.0 MiB, 2.5 MiB/s, in 0:00:02"
    assert format_progress(0, 0, 0.0, final=True) == "sent 0 B, in 0:00:00"


def test_clock_time():
    assert [clock_time(s) for s in (0, 1.9, 61, 3725.4, 360000)] == \
        ["0:00:00", "0:00:01", "0:01:01", "1:02:05", "100:00:00"]


def test_meter_counts_files_once_across_passes():
    m = Meter()
    for line in re.split(r"[\r\n]", rsync3_pass(BLOBS[:3]) + rsync3_pass([("refs/main", 40)])):
        p = parse_progress(line)
        m.feed(p) if p else m.file_ended()
    assert m.done == sum(s for _, s in BLOBS[:3]) + 40
    m.feed(FileProgress(700, 7, False))
    assert m.done == sum(s for _, s in BLOBS[:3]) + 740


def test_meter_without_last_lines_moves_on_at_the_next_file():
    m = Meter()
    for done in (500, 1000, 200):   # a second file began at 200
        m.feed(FileProgress(done, 50, False))
    assert m.done == 1200
    m.file_ended()
    assert (m.finished, m.current) == (1200, 0)


# ---- what the operator sees ------------------------------------------------------------------

@pytest.mark.parametrize("make_pass", [rsync3_pass, rsync269_pass, openrsync_pass])
def test_a_normal_sync_is_a_few_lines_without_file_list_or_stats(make_pass):
    done = "sync: done: file data sent 5800040 bytes, total sent 5802704 bytes"
    shown = watch(launcher_output(make_pass, done), Ticking(0.1))   # some 4 s of transfer
    lines = shown.splitlines()
    assert len(lines) <= 6, shown
    assert lines[0] == f"[mac4] sync: {REPO} -> mac4:{REPO} (revision abc123)"
    assert lines[1] == "[mac4] removed 2 leftover file(s)"
    assert lines[-1] == f"[mac4] {done}"
    assert lines[-2].startswith("[mac4] sent 3.0 MiB of 3.0 MiB (100%), ")   # 40 bytes over: capped
    assert all(l.startswith("[mac4] sending ") for l in lines[2:-2])
    for hidden in ("Number of files", "Literal data", "Total bytes", "Transfer complete", BLOBS[0][0],
                   "config.json", "refs/main", "xfr#", "xfer#", "incremental"):
        assert hidden not in shown


def test_progress_counts_the_three_passes_as_one_transfer():
    out = io.StringIO()
    w = Watch(Screen(out, "mac4", MISSING, Ticking(0.1)))
    for text in re.split(r"[\r\n]", rsync3_pass(BLOBS[:4]) + rsync3_pass(BLOBS[4:9]) + rsync3_pass(BLOBS[9:])):
        w.line(text)
    w.close(0)
    assert w.meter.done == MISSING
    assert out.getvalue().splitlines() == ["[mac4] sent 3.0 MiB of 3.0 MiB (100%), 826.6 KiB/s, in 0:00:03"]


def test_a_log_gets_a_progress_line_every_ten_seconds_and_one_at_the_end():
    big = 100 * 1024 * 1024
    updates = "".join(f"{big * i // 40:>15,} {i * 100 // 40:>3}%   10.00MB/s    0:00:30  \r" for i in range(40))
    last = f"{big:>15,} 100%   10.00MB/s    0:00:40 (xfr#1, to-chk=0/2)\n"
    output = f"sending incremental file list\nblob\n{updates}{last}"
    lines = watch(output, Ticking(1.0), expected=big).splitlines()   # one rsync update a second
    assert [l.split(" of ")[0] for l in lines] == [
        "[mac4] sending 22.5 MiB", "[mac4] sending 47.5 MiB", "[mac4] sending 72.5 MiB", "[mac4] sending 97.5 MiB",
        "[mac4] sent 100.0 MiB"]
    assert lines[1] == "[mac4] sending 47.5 MiB of 100.0 MiB (47%), 2.4 MiB/s, ETA 0:00:22"
    assert lines[-1] == "[mac4] sent 100.0 MiB of 100.0 MiB (100%), 2.4 MiB/s, in 0:00:42"


def test_a_short_transfer_in_a_log_prints_one_progress_line():
    shown = watch(rsync3_pass(BLOBS[:2]), Ticking(0.01), expected=BLOBS[0][1] + BLOBS[1][1])
    assert shown.splitlines() == ["[mac4] sent 119.1 KiB of 119.1 KiB (100%), 1.7 MiB/s, in 0:00:00"]


def test_on_a_terminal_the_line_is_rewritten_in_place_and_ended_once():
    term = Terminal()
    watch(launcher_output(rsync3_pass, "sync: done: x"), Ticking(1.0), out=term)
    lines = term.getvalue().split("\n")
    assert lines[0].startswith("[mac4] sync: ") and lines[1] == "[mac4] removed 2 leftover file(s)"
    assert lines[3:] == ["[mac4] sync: done: x", ""]
    frames = lines[2].split("\r")[1:]
    assert len(frames) > 10 and all(f.startswith("[mac4] sending ") for f in frames[:-1])
    assert frames[-1].startswith("[mac4] sent 3.0 MiB of 3.0 MiB (100%)")
    for before, after in zip(frames, frames[1:]):
        assert len(after) >= len(before.rstrip())   # padded: no leftovers of a longer line


def test_a_message_during_the_transfer_wipes_the_line_first():
    term = Terminal()
    output = rsync3_pass(BLOBS[:1]) + 'rsync: [sender] read errors mapping "x": Input/output error (5)\n'
    watch(output, Ticking(1.0), out=term)
    progress, wipe, error, final = term.getvalue().split("\r")[-4:]
    assert progress.startswith("[mac4] sending ") and wipe == " " * len(progress)
    assert error == '[mac4] rsync: [sender] read errors mapping "x": Input/output error (5)\n'
    assert final.startswith("[mac4] sent 40.0 KiB of 3.0 MiB (1%)") and final.endswith("\n")


def test_errors_show_and_a_failure_shows_the_last_hidden_lines_of_its_pass():
    output = (rsync3_pass(BLOBS[:2]) + "sending incremental file list\n"
              'rsync: [receiver] mkstemp "x" failed: No space left on device (28)\n'
              "bash: line 1: weird remote noise\n"
              "rsync error: error in file IO (code 11) at receiver.c(380) [receiver=3.2.7]\n")
    lines = watch(output, Ticking(1.0), code=11).splitlines()
    assert lines[0].endswith("No space left on device (28)") and "(code 11)" in lines[1]
    assert lines[2].startswith("[mac4] sent ")
    assert lines[3:] == ["[mac4] bash: line 1: weird remote noise"]   # the first pass's names are no clue
    assert "weird" not in watch(output, Ticking(1.0), code=0)


# ---- the runner, with a real child process -------------------------------------------------------

PLAYER = """import sys, time
data = open(sys.argv[1], "rb").read()
for i in range(0, len(data), 700):          # odd chunk sizes: lines arrive split
    sys.stdout.buffer.write(data[i:i + 700]); sys.stdout.buffer.flush(); time.sleep(0.002)
sys.exit(int(sys.argv[2]))
"""


def play(tmp_path, output, code=0, **kw):
    canned = tmp_path / "canned"
    canned.write_bytes(output.encode())
    out = kw.pop("out", io.StringIO())
    result = stream([sys.executable, "-c", PLAYER, str(canned), str(code)], "mac4", MISSING + 40, out=out, **kw)
    return result, out.getvalue()


def test_stream_shows_a_short_summary_and_keeps_everything(tmp_path):
    output = launcher_output(rsync3_pass, launcher_done_line(launcher_passes(rsync3_pass), tmp_path))
    (code, full), shown = play(tmp_path, output, clock=Ticking(0.01))
    assert code == 0
    assert shown.splitlines() == [
        f"[mac4] sync: {REPO} -> mac4:{REPO} (revision abc123)",
        "[mac4] removed 2 leftover file(s)",
        "[mac4] sent 3.0 MiB of 3.0 MiB (100%), 7.5 MiB/s, in 0:00:00",
        f"[mac4] sync: done: file data sent {MISSING + 40} bytes, total sent {MISSING + 40 + 2664} bytes"]
    assert full == output.replace("\r", "\n")
    assert parse_summary(full) == Summary(MISSING + 40, MISSING + 40 + 2664, "stats")


def test_stream_verbose_shows_everything(tmp_path):
    output = launcher_output(rsync269_pass, "sync: done: file data sent 1 bytes, total sent 2 bytes")
    (code, full), shown = play(tmp_path, output, code=23, verbose=True)
    assert code == 23
    for seen in (f"<f+++++++ {BLOBS[0][0]}", f"cL+++++++ {LINKS[0]}", "Number of files: 13", "Literal data: ", "Total bytes sent: ",
                 f"sync: removed leftover {REPO}/blobs/{'ab' * 32}.incomplete", "sync: done:"):
        assert f"[mac4] {seen}" in shown
    assert f"[mac4] {BLOBS[-1][1]:>12} 100%    1.01MB/s    0:00:02 (xfer#12, to-check=0/13)" in shown
    assert all(l.startswith("[mac4] ") for l in shown.splitlines())


def test_stream_on_a_terminal_ends_its_line(tmp_path):
    (code, _), shown = play(tmp_path, rsync3_pass(BLOBS), code=30, out=Terminal(), clock=Ticking(0.05))
    assert code == 30 and shown.startswith("\r[mac4] sen") and shown.endswith("\n")
    last = shown.rsplit("\r", 1)[-1]
    assert shown.count("\n") == 1 and last.startswith("[mac4] sent 3.0 MiB of 3.0 MiB (99%)")  # 40 bytes short


def test_stream_ends_soon_after_the_launcher_though_a_grandchild_holds_the_pipe(tmp_path):
    """A process that outlives the launcher (here a sleep; in a sync the launcher's ssh master, until
    its keepalives give up) keeps the pipe open: stream returns the launcher's own exit a short
    while (AFTER_EXIT) after it, with what came before and what was in the pipe, in order."""
    from thunderlane import transfer
    pid = tmp_path / "pid"
    script = (f"echo one; (sleep 0.3; echo late; exec sleep 30) & echo $! > {pid}; echo two; exit 3")
    t0 = time.monotonic()
    try:
        code, text = stream(["sh", "-c", script], "mac4", 0, out=io.StringIO(), verbose=True)
        seconds = time.monotonic() - t0
    finally:
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)
    assert code == 3 and text.split() == ["one", "two", "late"], (code, text)
    assert transfer.AFTER_EXIT <= seconds < transfer.AFTER_EXIT + 3, seconds


def _alive(pid):
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by init, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_stream_ends_what_is_left_of_the_launchers_group_but_not_a_session_of_its_own(tmp_path):
    """Read until AFTER_EXIT, not end-of-file: the launcher's leftovers (a tree listing, rsync,
    tee: here a sleep) get SIGTERM; a process in a session of its own (an ssh master) is left."""
    leftover, master = tmp_path / "leftover", tmp_path / "master"
    setsid = f"{shlex.quote(sys.executable)} -c 'import os, time; os.setsid(); time.sleep(30)'"
    script = f"(exec sleep 30) & echo $! > {leftover}; {setsid} & echo $! > {master}; echo one; exit 0"
    pids = []
    try:
        code, text = stream(["sh", "-c", script], "mac4", 0, out=io.StringIO(), verbose=True)
        pids = [int(p.read_text()) for p in (leftover, master)]
        for _ in range(50):
            if not _alive(pids[0]):
                break
            time.sleep(0.1)
        assert code == 0 and text.split() == ["one"], (code, text)
        assert not _alive(pids[0]) and _alive(pids[1])
    finally:
        for pid in pids or [int(p.read_text()) for p in (leftover, master) if p.exists()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
