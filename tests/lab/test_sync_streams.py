"""The sync launcher's blobs pass as two rsync streams side by side (pulling, when two big blobs or
more are missing): both arrive, the closing figures add up both streams' (what
thunderlane.rsync_lines.parse_summary reads), and a failed stream fails the sync at once: the other
stream is stopped and waited for, the snapshots pass never runs, nothing partial has a final name.
The lab's model is 1 MB: THUNDER_SYNC_STREAM_MIN=1 makes its two shards "big";
THUNDER_SYNC_STREAM_BWLIMIT (tests only) slows a stream (--bwlimit itself means one stream)."""
import glob
import os
import re
import signal
import subprocess
import time

import pytest

from thunderlane.lab import kit
from thunderlane.rsync_lines import parse_summary
from tests.lab.test_sync_launcher_peer import DONE, blobs, complete, pull_argv
from tests.lab.test_sync_launcher_rsyncd import daemons, rsyncd_argv

STREAMS = re.compile(r"^sync: blobs in two streams: (\d+) and (\d+) bytes$", re.M)


def env(**extra):
    return dict(os.environ, THUNDER_SYNC_STREAM_MIN="1", **extra)


def shards(lab_dir, host):
    """{blob name: size} of the host's weight shards (the blobs its snapshot's *.safetensors name)."""
    repo = kit.host_repo(lab_dir, host)
    rev = (repo / "refs" / "main").read_text().strip()
    names = [os.readlink(p).rsplit("/", 1)[-1] for p in (repo / "snapshots" / rev).glob("*.safetensors")]
    return {n: (repo / "blobs" / n).stat().st_size for n in names}


def host_rsyncs(lab_dir, forked=False):
    """(pid, command line) of the rsync processes writing into mac4's cache that an ssh session
    started (not the receiver each forks, whose parent is one of them, unless `forked`)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    dest = str(kit.host_cache(lab_dir, "mac4"))
    rows = [line.split(None, 2) for line in out.splitlines()]
    ours = {int(pid): (int(ppid), args) for pid, ppid, args in rows if args.startswith("rsync ") and dest in args}
    return [(pid, args) for pid, (ppid, args) in ours.items() if forked or ppid not in ours]


def start_slowed(lab_inv, lab_dir, rates, second_only=False):
    """The rsyncd pull, its streams slowed to RATES ("K1 K2" KiB/s), once both streams run on HOST
    (or, `second_only`, once stream 2 does: an unslowed stream 1 may end before a `ps` sees it):
    (the launcher, the rsyncs seen on HOST)."""
    t0 = time.monotonic()
    p = subprocess.Popen(rsyncd_argv(lab_inv, lab_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env(THUNDER_SYNC_STREAM_BWLIMIT=rates), start_new_session=True)
    seen = []

    def enough():
        return any("--include=/" in args for _, args in seen) if second_only else len(seen) == 2

    while not enough() and time.monotonic() - t0 < 30 and p.poll() is None:   # streams running on HOST
        seen = host_rsyncs(lab_dir)
        time.sleep(0.05)
    if not enough():
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"{seen}\n{out[-2000:]}\n{err[-2000:]}")
    return p, seen


@pytest.mark.parametrize("transport", ["rsyncd", "ssh"])
def test_two_streams_bring_every_blob_once_and_their_figures_add_up(lab_inv, lab_dir, transport):
    want = shards(lab_dir, "mac5")
    assert len(want) == 2 and not set(want) & set(blobs(lab_dir, "mac4"))   # mac4 lacks both shards
    argv = rsyncd_argv(lab_inv, lab_dir) if transport == "rsyncd" else pull_argv(lab_inv, lab_dir)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    split = STREAMS.search(p.stdout)
    assert split and sorted(map(int, split.groups())) == sorted(want.values()), p.stdout[-2000:]
    assert complete(lab_inv, "mac4")
    # each shard itemized once (one stream each), the figures those of both streams
    for name in want:
        assert len(re.findall(rf"^>f\S+ {name}$", p.stdout, re.M)) == 1, p.stdout[-3000:]
    received = sum(int(v.replace(",", "")) for v in re.findall(r"^Total bytes received: ([\d,]+)$", p.stdout, re.M))
    literal, total = map(int, DONE.search(p.stdout).groups())
    assert literal == sum(want.values()) and total == received, p.stdout[-3000:]
    summary = parse_summary(p.stdout)
    assert (summary.literal_bytes, summary.total_sent, summary.file_data_from) == (literal, total, "stats")
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_a_failed_stream_stops_the_other_and_no_later_pass_runs(lab_inv, lab_dir):
    """Each stream slowed to 20 KiB/s (a shard takes about 20 s); the stream of the blob dealt
    second (the --include one) is stopped on HOST with SIGTERM to its process group (rsync's exit 20): the launcher
    exits 20 within seconds, the other stream's rsync is gone with it, no snapshot link was made
    for a shard, and no shard is under its final name unless whole."""
    want = shards(lab_dir, "mac5")
    t0 = time.monotonic()
    p, both = start_slowed(lab_inv, lab_dir, "20 20")
    try:
        second = [pid for pid, args in both if "--include=/" in args]
        assert len(second) == 1, both
        os.killpg(second[0], signal.SIGTERM)   # its session's group: its rsync exits 20
        # rsync 3's receiver, TERMed, may finish its file first (its "controlled shutdown"), holding
        # the session open 20 s: once the rsync the session started has exited, it is killed, as a
        # dead link would end it (the session's exit stays that rsync's 20)
        deadline = time.monotonic() + 10
        while any(pid == second[0] for pid, _ in host_rsyncs(lab_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, args in host_rsyncs(lab_dir, forked=True):
            if "--include=/" in args:
                os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        # the other stream's whole group (its receiver too) ended before the launcher did
        other = [args for _, args in host_rsyncs(lab_dir, forked=True) if "--include=/" not in args]
    finally:
        if p.poll() is None:   # as fab stops a launcher: its whole process group
            os.killpg(p.pid, signal.SIGKILL)
        for pid, args in host_rsyncs(lab_dir, forked=True):   # what the test's TERM left
            if "--include=/" in args:
                os.kill(pid, signal.SIGKILL)
    took = time.monotonic() - t0
    assert p.returncode == 20, out[-2000:] + err[-2000:]
    assert took < 15, (took, out[-3000:], err[-2000:])   # not after the other stream's 20 s
    assert not other, other
    deadline = time.monotonic() + 5   # the daemon's child for a client gone ends on its next write
    while (host_rsyncs(lab_dir, forked=True) or daemons()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not host_rsyncs(lab_dir, forked=True)   # the other stream's group too (its receiver)
    assert "sync: done" not in out
    repo = kit.host_repo(lab_dir, "mac4")
    rev = (repo / "refs" / "main").read_text().strip()
    assert not list((repo / "snapshots" / rev).glob("*.safetensors"))   # the snapshots pass never ran
    for name, size in want.items():
        path = repo / "blobs" / name
        assert not path.exists() or path.stat().st_size == size
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_one_big_blob_missing_is_one_stream(lab_inv, lab_dir):
    """mac4 already holds one shard (the host lists its blobs' sizes): only the other is missing, so
    the blobs pass is one rsync, which sends that shard alone."""
    want = shards(lab_dir, "mac5")
    have, missing = sorted(want)
    src = kit.host_repo(lab_dir, "mac5") / "blobs" / have
    dst = kit.host_repo(lab_dir, "mac4") / "blobs" / have
    dst.write_bytes(src.read_bytes())
    os.utime(dst, (src.stat().st_atime, src.stat().st_mtime))
    p = subprocess.run(rsyncd_argv(lab_inv, lab_dir), capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert not STREAMS.search(p.stdout), p.stdout[-2000:]
    assert re.findall(r"^>f\S+ ([0-9a-f]{64})$", p.stdout, re.M) == [missing], p.stdout[-2000:]
    assert complete(lab_inv, "mac4")


def test_bwlimit_is_one_stream_and_stream_min_is_one_or_more(lab_inv, lab_dir):
    """--bwlimit (rsync's, per process) keeps the blobs pass one rsync: two would take twice the rate
    asked; THUNDER_SYNC_STREAM_MIN 0 is refused (usage, 64) before anything runs."""
    p = subprocess.run(rsyncd_argv(lab_inv, lab_dir, "--bwlimit", "100000"), capture_output=True, text=True,
                       timeout=120, env=env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert not STREAMS.search(p.stdout), p.stdout[-2000:]
    assert len(re.findall(r"^>f\S+ [0-9a-f]{64}$", p.stdout, re.M)) >= 2, p.stdout[-2000:]
    p = subprocess.run(rsyncd_argv(lab_inv, lab_dir), capture_output=True, text=True, timeout=60,
                       env=dict(env(), THUNDER_SYNC_STREAM_MIN="0"))
    assert p.returncode == 64 and "THUNDER_SYNC_STREAM_MIN '0'" in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]


def test_the_second_stream_is_shown_live_once_the_first_ended(lab_inv, lab_dir):
    """Stream 1 unslowed, stream 2 at 100 KiB/s: once stream 1 ended, stream 2's lines reach the
    launcher's output while its rsync still runs on HOST (fab's silence watchdog sees progress)."""
    p, seen = start_slowed(lab_inv, lab_dir, "0 100", second_only=True)
    try:
        name = [re.search(r"--include=/([0-9a-f]{64})", args).group(1) for _, args in seen if "--include=/" in args]
        assert len(name) == 1, seen
        live = None
        for line in p.stdout:
            if line.rstrip("\n").endswith(" " + name[0]) and line.startswith(">f"):
                live = [args for _, args in host_rsyncs(lab_dir) if "--include=/" in args]
                break
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out[-2000:] + err[-2000:]
    assert live, "stream 2's itemized line came only once its rsync had ended"


def test_a_stopped_launcher_stops_both_streams_on_host(lab_inv, lab_dir):
    """SIGTERM to the launcher (as fab's watchdog sends it) mid-streams: both rsyncs on HOST (and
    the receivers they forked) are stopped before it exits (left to themselves, its streams' ssh
    would hold its output open until their shard arrived), no partial blob under a final name."""
    want = shards(lab_dir, "mac5")
    p, both = start_slowed(lab_inv, lab_dir, "20 20")
    try:
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        took = time.monotonic() - t0
        left = host_rsyncs(lab_dir, forked=True)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0 and "sync: done" not in out
    assert took < 10, took   # not once the streams' ssh here end by themselves (a shard's 20 s)
    assert not left, left
    repo = kit.host_repo(lab_dir, "mac4")
    for name, size in want.items():
        path = repo / "blobs" / name
        assert not path.exists() or path.stat().st_size == size
    deadline = time.monotonic() + 5
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")
