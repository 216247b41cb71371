"""sync-cache when the local rsync prints no --stats figures, as openrsync (macOS 15.4+'s
/usr/bin/rsync) does: the real rsync behind a wrapper that drops its stats block. File data is
then derived from the files rsync itemized as sent, and every figure says so."""
import os
import shutil

from tests.lab.conftest import by_host, fab, fab_json
from thunderlane.lab import kit

STATS = r"/^(Number of |Total |Literal data:|Matched data:|File list |sent [0-9,.]+ bytes|total size is )/d"


def statless_rsync(folder):
    """A PATH folder whose ``rsync`` is the real one with its stats block removed (openrsync's
    session.c prints none; with -v only one rounded 'Transfer complete' line)."""
    folder.mkdir()
    wrapper = folder / "rsync"
    wrapper.write_text(f"#!/bin/bash\nset -o pipefail\n{shutil.which('rsync')} \"$@\" | sed -E '{STATS}'\n")
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_file_data_is_derived_from_itemized_files_without_rsync_stats(lab_inv, tmp_path):
    env = statless_rsync(tmp_path / "bin")
    missing = by_host(fab_json(lab_inv, "verify-cache")[1])["mac4"]["figures"]["missing_bytes"]

    p = fab(lab_inv, "sync-cache", "--host", "mac4", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Literal data" not in p.stdout and "Total transferred file size" not in p.stdout
    would = [l for l in p.stdout.splitlines() if "sync: dry run: would send" in l]
    assert would and "files itemized) of file data" in would[0], p.stdout[-2000:]

    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4", env=env)
    row = out["results"][0]
    assert code == 0 and (row["before"], row["after"]) == ("partial", "complete"), out
    assert row["literal_from"] == "itemized" and row["total_sent"] is None, row
    assert "files itemized)" in row["literal_derivation"]
    # every missing blob went whole; the repo's small files outside blobs/ (refs/main, trees/*.json)
    # whose mtime differs are itemized too and counted whole (rsync's delta would send less of them)
    repo = kit.host_repo(lab_inv.path.rsplit("/", 1)[0], "local")
    small = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file() and not f.is_symlink()
                and f.relative_to(repo).parts[0] not in ("blobs", "snapshots"))
    assert missing <= row["literal_bytes"] <= missing + small, (row, small)

    blob = next(b for b in (kit.host_repo(lab_inv.path.rsplit("/", 1)[0], "mac4") / "blobs").iterdir()
                if len(b.name) == 64)
    blob.with_name(blob.name + ".0123abcd.incomplete").write_bytes(b"x")  # a leftover: the launcher runs
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4", env=env)
    row = out["results"][0]
    assert code == 0 and row["literal_bytes"] == 0 and row["literal_derivation"] == \
        " (derived from 0 files itemized)", row


def test_mirror_back_without_rsync_stats_counts_the_files_received(warm_lab, profile_dir, tmp_path):
    env = statless_rsync(tmp_path / "bin")
    code, r = fab_json(warm_lab, "train-window", "--profile", "run_a", "--target", "2", "--window", "2",
                       env={"THUNDER_PROFILES": str(profile_dir)})
    assert code == 0 and r["verdict"] == "success", r
    code, m = fab_json(warm_lab, "mirror-back", "--profile", "run_a", env={"THUNDER_PROFILES": str(profile_dir), **env})
    assert code == 0, m
    # a first mirror receives every file whole: the derived figure is all of them
    assert m["derived_from"] == m["files"] and m["literal_bytes"] == m["run_bytes"] > 0, m
    p = fab(warm_lab, "mirror-back", "--profile", "run_a", env={"THUNDER_PROFILES": str(profile_dir), **env})
    assert p.returncode == 0 and "(derived from 0 files itemized)" in p.stdout, p.stdout + p.stderr
