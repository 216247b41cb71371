"""Fault cases 33-36: faults only real links produce, on the namespaced lab (root, Linux; skipped
elsewhere). A cable is pulled with `fab lab-link HOST control|data down`: packets stop, nothing
resets, as with a real cable (thunderlane/lab/netns_plan.py cable())."""
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from thunderlane import checkpoint, inventory, lab, peer_setup
from thunderlane.lab import kit, netns
from thunderlane.facts import RunFacts

from .conftest import (FAB, HOSTS, LAYOUT, ROOT, namespaced_lab, by_host, fab, fab_json, no_rank_left, run_facts, start_fab,
                       wait_for_step)
from .test_peer_sync import remove_peers

CONTROL_MBIT, DATA_MBIT = 100, 1000
WATCHDOG = 20


@pytest.fixture(scope="module")
def links_lab(tmp_path_factory):
    for d, _ in namespaced_lab(tmp_path_factory, "links-lab", CONTROL_MBIT, DATA_MBIT):
        yield d


@pytest.fixture
def links_inv(links_lab):
    """The namespaced lab reset to the handoff's situation (mac4 partial), every cable plugged."""
    for host in HOSTS:
        for which in ("control", "data"):
            netns.link(links_lab, host, which, "up")
    return inventory.load(lab.up(HOSTS, lab=links_lab, model_mb=1.0, reseed=True, layout=LAYOUT))


class Pulled:
    """``with Pulled(lab, host, which):`` the cable is out; it goes back in whatever happens."""

    def __init__(self, lab_dir, host, which):
        self.lab_dir, self.host, self.which = lab_dir, host, which

    def __enter__(self):
        netns.link(self.lab_dir, self.host, self.which, "down")
        self.at = time.monotonic()
        return self

    def __exit__(self, *exc):
        netns.link(self.lab_dir, self.host, self.which, "up")


def edited_inventory(inv, tmp_path, name, change):
    data = yaml.safe_load(Path(inv.path).read_text())
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for(path, seconds=30):
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


# mac5's interpreter in a test inventory: marks that the probe started, waits 3 s (the cable is
# pulled meanwhile, the ssh session open), then runs the real probe, whose answer never arrives
WAITING = """#!/bin/sh
: > {mark}
sleep 3
exec {python} "$@"
"""


@pytest.mark.fault_case("35", "the control cable is pulled during a probe",
                        "`fab lab-link mac5 control down` while mac5's probe runs (its interpreter waits 3 s "
                        "first); `verify-cache` and `verify-dataset`")
def test_35_control_cable_pulled_mid_probe_is_unreachable_within_the_connect_timeout(links_inv, links_lab,
                                                                                      tmp_path, reliability):
    """mac5 is reported `unreachable` (the link went silent) within the connect timeout (+2 s of
    pinging) from the pull, not after the probe timeout (120 s); mac4 and local are still judged
    from their own answers; no traceback."""
    mark = tmp_path / "probe-started"
    script = tmp_path / "python"
    script.write_text(WAITING.format(mark=mark, python=links_inv.hosts["mac5"].python))
    script.chmod(0o755)
    path = edited_inventory(links_inv, tmp_path, "waiting", lambda d: d["hosts"]["mac5"].update(python=str(script)))
    connect_timeout = links_inv.ssh.connect_timeout
    worst = 0.0
    for task in ("verify-cache", "verify-dataset"):
        mark.unlink(missing_ok=True)
        out = {}
        env = dict(os.environ, THUNDER_INVENTORY=str(path))
        run = threading.Thread(target=lambda: out.update(p=subprocess.run(
            [FAB, task, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)))
        run.start()
        assert wait_for(mark), "mac5's probe never started"
        with Pulled(links_lab, "mac5", "control") as pulled:
            run.join(120)
            seconds = time.monotonic() - pulled.at
        p = out["p"]
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        hosts = by_host(json.loads(p.stdout))
        assert p.returncode == 1 and hosts["mac5"]["verdict"] == "unreachable", (task, hosts["mac5"])
        assert "went silent" in hosts["mac5"]["detail"], hosts["mac5"]
        assert hosts["mac4"]["verdict"] not in ("timeout", "unreachable", "error"), hosts["mac4"]
        assert hosts["local"]["ok"], hosts["local"]
        assert seconds < connect_timeout + 2 + 3, (task, seconds)   # + fab's own end
        worst = max(worst, seconds)
    reliability(seconds_after_pull=round(worst, 1), connect_timeout=connect_timeout)


def missing_blobs(inv, lab_dir, host):
    repo = kit.host_repo(lab_dir, host)
    local = Path(inv.local.hf_cache) / kit.REPO_FOLDER
    have = {b.name for b in (repo / "blobs").iterdir()} if (repo / "blobs").is_dir() else set()
    return {b.name for b in (local / "blobs").iterdir()} - have


RSYNC_TIMEOUT = 3


def slow_sync_past_a_first_blob(inv, lab_dir, tmp_path, more):
    """A running `fab sync-cache --host mac4 --bwlimit 64 MORE --json` (ssh.rsync_timeout 3 s) once a
    first missing blob has arrived on mac4 and others are still missing: (the process, the blobs
    missing before it, those that arrived)."""
    path = edited_inventory(inv, tmp_path, "rsync_timeout", lambda d: d["ssh"].update(rsync_timeout=RSYNC_TIMEOUT))
    missing = missing_blobs(inv, lab_dir, "mac4")
    assert len(missing) >= 2, missing
    env = dict(os.environ, THUNDER_INVENTORY=str(path))
    argv = [FAB, "sync-cache", "--host", "mac4", "--bwlimit", "64", *more, "--json"]
    sync = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while missing_blobs(inv, lab_dir, "mac4") == missing and sync.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.poll() is None, "the sync ended before the cable could be pulled"
        arrived = missing - missing_blobs(inv, lab_dir, "mac4")
        assert arrived and missing_blobs(inv, lab_dir, "mac4"), "no blob arrived, or all did"
    except BaseException:
        sync.kill()
        sync.communicate()
        raise
    return sync, missing, arrived


@pytest.mark.fault_case("34", "the control cable is pulled mid-sync",
                        "`fab sync-cache --host mac4 --bwlimit 64` (ssh.rsync_timeout 3 s); `fab lab-link mac4 "
                        "control down` once a first missing blob has arrived; plugged back, the sync run again")
def test_34_control_cable_pulled_mid_sync_then_rerun_sends_only_what_is_missing(links_inv, links_lab, tmp_path,
                                                                                  reliability):
    """The sync fails naming mac4 (ssh's keepalives unanswered, or rsync's timeout) within about
    `ssh.connect_timeout + ssh.rsync_timeout` of the pull (the ssh under rsync and the launcher gives
    up after that much silence: sshopts.server_alive), with no traceback; with the cable back, a rerun
    completes mac4 sending only what was still missing: the blobs that arrived before the pull are
    kept and not sent again, nor counted missing by its verify (its missing bytes are the other
    blobs' bytes, and so is rsync's file data, within 4 KiB);
    `verify-cache --deep` passes."""
    sync, missing, arrived = slow_sync_past_a_first_blob(links_inv, links_lab, tmp_path, [])
    try:
        with Pulled(links_lab, "mac4", "control") as pulled:
            out, err = sync.communicate(timeout=120)
            seconds = time.monotonic() - pulled.at
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.communicate()
    assert "Traceback" not in err, err[-3000:]
    first = json.loads(out)
    assert sync.returncode == 1 and any(e.startswith("mac4: sync failed") for e in first["errors"]), first
    # with a long session's keepalives (silent 40 s: 10 s x 4) the launcher's ssh master, which holds
    # rsync's pipes, kept fab waiting long after rsync had stopped; + 10 s: the launcher's trap and
    # fab's own end on a loaded 2-core machine (still far below the old 40 s)
    bound = links_inv.ssh.connect_timeout + RSYNC_TIMEOUT + 10
    assert seconds < bound, (seconds, bound, first)
    code, again = fab_json(links_inv, "sync-cache", "--host", "mac4")
    assert code == 0, again
    row = again["results"][0]
    assert row["after"] == "complete", row
    sizes = {b.name: b.stat().st_size for b in (Path(links_inv.local.hf_cache) / kit.REPO_FOLDER / "blobs").iterdir()}
    kept, still = sum(sizes[b] for b in arrived), sum(sizes[b] for b in missing - arrived)
    # the blobs that arrived before the pull are not sent again: rsync's file data is the rest (the
    # blob cut off by the pull goes again whole: rsync keeps no partial file), plus small files; the
    # verify before the rerun counts exactly those blobs missing, not the arrived ones whose links
    # the interrupted sync never made
    assert row["missing_bytes"] == still > 0, (row, kept, still)
    assert still <= row["literal_bytes"] <= still + 4096, (row, kept, still)
    code, report = fab_json(links_inv, "verify-cache", "--deep")
    assert code == 0, report
    reliability(seconds_after_pull=round(seconds, 1), bound=bound, kept_bytes=kept,
                rerun_missing_bytes=row["missing_bytes"], rerun_file_data=row["literal_bytes"],
                still_missing_bytes=still)


@pytest.mark.fault_case("33", "the data cable is pulled mid-window",
                        "`fab lab-link mac5 data down` once mac5 has committed step 5 of a 60-step window; "
                        "a 20 s watchdog (the model load must fit in it on a loaded machine)")
def test_33_data_cable_pulled_mid_window(links_inv, links_lab, tmp_path, reliability):
    """The ring goes silent (mlx gets no error: the cable sends nothing), the watchdog ends the
    window: verdict `distributed-hang` (or `data-link` naming the link) within the watchdog plus
    reaping; every rank is reaped over the control link; the last committed step passes the gate on
    every host, and once the cable is back `mirror-back` brings exactly that step home."""
    assert fab(links_inv, "sync-cache", "--host", "mac4").returncode == 0
    kit.write_profile(tmp_path, "links", "test_links", source="synthetic_mechanics", lane={"min_free_mb": 0})
    env = {"THUNDER_PROFILES": str(tmp_path)}
    proc = start_fab(links_inv, "train-window", "--profile", "links", "--target", "60", "--window", "60",
                     "--watchdog", str(WATCHDOG), "--json", env=env)
    try:
        deadline = time.monotonic() + 300
        while not wait_for_step(links_inv, "mac5", "test_links", 5, seconds=1) and time.monotonic() < deadline:
            assert proc.poll() is None, "the window ended before step 5: " + proc.stdout.read()[-3000:]
        with Pulled(links_lab, "mac5", "data") as pulled:
            out, _ = proc.communicate(timeout=180)
            seconds = time.monotonic() - pulled.at
            r = json.loads(out)
            deadline = time.monotonic() + 15
            while not no_rank_left() and time.monotonic() < deadline:
                time.sleep(0.5)
            reaped = no_rank_left()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert r["verdict"] in ("distributed-hang", "data-link"), r
    if r["verdict"] == "data-link":
        assert "mac5" in r["explanation"], r
    assert seconds < WATCHDOG + 30, seconds
    assert reaped, "a rank outlived the window"
    steps = set()
    for host in HOSTS:
        facts = RunFacts.from_json(run_facts(links_inv, host, "test_links"))
        step = checkpoint.committed_step(facts)
        assert step >= 5 and checkpoint.gate(host, facts, step).ok, (host, step)
        steps.add(step)
    assert len(steps) == 1, steps
    code, m = fab_json(links_inv, "mirror-back", "--profile", "links", env=env)
    assert code == 0 and m["step"] == steps.pop(), m
    reliability(watchdog_seconds=WATCHDOG, seconds_after_pull=round(seconds, 1), verdict=r["verdict"])


PEER_SYNC = "`fab sync-cache --host mac4 --from mac5 --bwlimit 64{}` (ssh transport, ssh.rsync_timeout 3 s); " \
    "`fab lab-link mac4 data down` once a first missing blob has arrived; plugged back, the sync run again"


@pytest.mark.parametrize("checksum", [
    pytest.param(False, id="plain", marks=pytest.mark.fault_case(
        "36", "the data cable is pulled mid peer-sync", PEER_SYNC.format(""))),
    pytest.param(True, id="checksum", marks=pytest.mark.fault_case(
        "36b", "the data cable is pulled mid peer-sync --checksum (rsync's own timeout is the deep scan's)",
        PEER_SYNC.format(" --checksum")))])
def test_36_data_cable_pulled_mid_peer_sync_then_rerun_sends_only_what_is_missing(links_inv, links_lab, tmp_path,
                                                                                   reliability, checksum):
    """`--from mac5` makes no fallback: the sync fails naming mac4 and its source mac5 within about
    `ssh.connect_timeout + ssh.rsync_timeout` of the pull, with no traceback, and what ran on mac4
    for it (its rsync, the peer ssh under it) has ended within that too, the cable still out: the
    peer ssh keeps the keepalives of the ssh under rsync (sshopts.server_alive), not a long
    session's 10 s x 3 (it lived 40 s, and with --checksum, whose rsync --timeout is the deep
    scan's, held fab that long; back sooner, the cable let it finish a blob beside the rerun). Every
    blob under its final name on mac4 is whole (local's bytes); with the cable back, a rerun from
    mac5 completes mac4 sending only what was still missing (its verify's missing bytes are exactly
    the blobs still missing, and so is rsync's file data, within 4 KiB), and `verify-cache --deep` passes."""
    try:
        report = peer_setup.setup_peers(links_inv)
        assert report.ok, report.to_json()
        first, seconds, gone, arrived, missing = _peer_sync_with_data_cable_pulled(links_inv, links_lab, tmp_path,
                                                                             ["--checksum"] if checksum else [])
        assert any(e.startswith("mac4: sync failed") and "from mac5" in e for e in first["errors"]), first
        bound = links_inv.ssh.connect_timeout + RSYNC_TIMEOUT + 10  # as fault 34: the launcher's trap, fab's end on a loaded machine (old rule: 40 s)
        assert seconds < bound and gone < bound, (seconds, gone, bound, first)
        local = Path(links_inv.local.hf_cache) / kit.REPO_FOLDER / "blobs"
        for blob in (kit.host_repo(links_lab, "mac4") / "blobs").iterdir():
            if not blob.name.startswith("."):   # rsync's temporary files are dot files
                assert blob.read_bytes() == (local / blob.name).read_bytes(), f"{blob} is partial"
        code, again = fab_json(links_inv, "sync-cache", "--host", "mac4", "--from", "mac5")
        assert code == 0, again
    finally:
        remove_peers(links_inv, links_lab)   # the other cases sync from local
    row = again["results"][0]
    assert row["source"] == "mac5" and row["after"] == "complete", row
    sizes = {b.name: b.stat().st_size for b in local.iterdir()}
    still = sum(sizes[b] for b in missing - arrived)
    assert row["missing_bytes"] == still > 0, (json.dumps(row), still)  # per blob: the arrived ones are not missing
    assert still <= row["literal_bytes"] <= still + 4096, (json.dumps(row), still)
    code, deep = fab_json(links_inv, "verify-cache", "--deep")
    assert code == 0, deep
    reliability(seconds_after_pull=round(seconds, 1), host_pull_ended_after=round(gone, 1), bound=bound,
                kept_bytes=sum(sizes[b] for b in arrived), rerun_missing_bytes=row["missing_bytes"],
                rerun_file_data=row["literal_bytes"], still_missing_bytes=still)


def _peer_sync_with_data_cable_pulled(inv, lab_dir, tmp_path, more):
    """(fab's JSON, seconds from the pull to fab's end and to the end of what ran on mac4, the blobs
    that arrived before the pull, the blobs missing before the sync) of a `sync-cache --from mac5`
    whose mac4 data cable is pulled mid-transfer."""
    sync, missing, arrived = slow_sync_past_a_first_blob(inv, lab_dir, tmp_path, ["--from", "mac5", *more])
    try:
        with Pulled(lab_dir, "mac4", "data") as pulled:
            out, err = sync.communicate(timeout=120)
            seconds = time.monotonic() - pulled.at
            # fab's watchdog stopped the launcher; mac4's rsync and the peer ssh under it live on
            # until ssh's keepalives go unanswered (or rsync times out): were the cable back
            # sooner, they could finish a blob alongside the rerun
            deadline = time.monotonic() + 60
            while pulling(lab_dir, "mac4") and time.monotonic() < deadline:
                time.sleep(0.1)
            gone = time.monotonic() - pulled.at
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.communicate()
    assert "Traceback" not in err, err[-3000:]
    assert sync.returncode == 1, (out, err[-3000:])
    return json.loads(out), seconds, gone, arrived, missing


def pulling(lab_dir, host):
    """The command lines of the rsync and peer ssh still running for ``host``'s cache (its folder
    in the lab is in their arguments)."""
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True).stdout
    mine = f"{lab_dir / host}/"
    return [line for line in ps.splitlines() if mine in line and line.split()[0] in ("rsync", "ssh")]
