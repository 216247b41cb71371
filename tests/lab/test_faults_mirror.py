"""Fault cases 19-21 (docs/RELIABILITY.md): mirror-back against a compromised writer, a writer reset
to another run, and two mirror-backs racing. Real sshd, rsync and training on the lab; the writer's
run directory is tampered with on disk, as a compromised host would."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from thunderlane import inventory, layout, mirror, mirror_rules as rules, profiles
from tests.lab.conftest import fab, start_fab, train, tree

RUN = "test_run_a"


def writer_run(inv):
    return Path(inv.hosts["mac4"].runs_root) / RUN


def committed(inv, profile_dir, step):
    code, r = train(inv, profile_dir, "run_a", "--target", str(step), "--window", str(step))
    assert code == 0, r
    return json.loads((writer_run(inv) / "checkpoint.json").read_text())


def expected_names(record):
    return sorted([*record["files"], "checkpoint.json", "adapters.safetensors"])


def no_leftovers(inv):
    root = layout.local(inv).root
    incoming = layout.local(inv).staging(RUN)
    assert not incoming.exists() or os.listdir(incoming) == []
    assert not [p.name for p in (root / ".locks").glob("mirror-back.*")]
    assert not os.path.lexists(root / f".{RUN}.old")


# 19 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("19", "a compromised writer: links to local files and folders, a folder, extra "
                              "and temp-named files, a named file that is a link or a folder, a wrong size",
                        "planted in the writer's run directory (the lab's hosts share this machine's "
                        "disk, so a followed link would read the local file); a pull capped below a file's size")
def test_19_compromised_writer_brings_nothing_home_but_the_named_files(warm_lab, profile_dir, tmp_path,
                                                                        monkeypatch):
    """Planted links, folders and extra files are never pulled and nothing outside the mirror is read
    or written; a named file that is a link or a folder, or a size that differs from checkpoint.json,
    is refused by name with the old mirror intact; a file over its cap does not arrive; entries an
    rsync lets in unasked (a link, a folder, an extra file) are refused by name, the mirror intact."""
    record = committed(warm_lab, profile_dir, 5)
    prof = profiles.load("run_a", profile_dir)
    mirror_dir = Path(mirror.mirror_back(warm_lab, prof).local_dir)
    secret = tmp_path / "secret"
    secret.write_text("local secret, never to be read by mirror-back\n")
    (tmp_path / "secret_dir").mkdir()
    (tmp_path / "secret_dir" / "inside").write_text("local folder, never to be read\n")
    run = writer_run(warm_lab)
    for name, target in (("evil_link", secret), ("evil_dirlink", tmp_path / "secret_dir"),
                         ("handoff_report.md", secret), (".handoff_report.md.tmp", secret),
                         ("runs_link", layout.local(warm_lab).root)):
        os.symlink(target, run / name)
    (run / "planted").mkdir()
    (run / "planted" / "inside.bin").write_bytes(b"p" * 100)
    (run / "extra.bin").write_bytes(b"e" * 1000)
    outside, outside_dir = tree(tmp_path), tree(tmp_path / "secret_dir")

    mirror.mirror_back(warm_lab, prof)
    assert sorted(os.listdir(mirror_dir)) == expected_names(record)
    assert all(not p.is_symlink() and p.is_file() for p in mirror_dir.iterdir())
    assert not any(b"local secret" in p.read_bytes() or b"local folder" in p.read_bytes() for p in mirror_dir.iterdir())
    assert tree(tmp_path) == outside
    good = tree(mirror_dir)

    step_file, state_file = record["step_file"], record["state_file"]
    shutil.move(run / step_file, tmp_path / "kept_step")
    os.symlink(secret, run / step_file)  # a named file replaced by a link to a local file
    with pytest.raises(mirror.MirrorError, match=step_file):
        mirror.mirror_back(warm_lab, prof)
    os.unlink(run / step_file)
    shutil.move(tmp_path / "kept_step", run / step_file)
    assert tree(mirror_dir) == good

    shutil.move(run / state_file, tmp_path / "kept_state")
    (run / state_file).mkdir()  # a named file replaced by a folder
    with pytest.raises(mirror.MirrorError, match=state_file):
        mirror.mirror_back(warm_lab, prof)
    (run / state_file).rmdir()
    shutil.move(tmp_path / "kept_state", run / state_file)
    assert tree(mirror_dir) == good

    original = (run / "checkpoint.json").read_text()
    bigger = json.loads(original)
    bigger["files"][step_file]["size"] = 50 << 30  # checkpoint.json claims a 50 GiB step file
    (run / "checkpoint.json").write_text(json.dumps(bigger))
    with pytest.raises(mirror.MirrorError, match=step_file):
        mirror.mirror_back(warm_lab, prof)
    (run / "checkpoint.json").write_text(original)
    assert tree(mirror_dir) == good
    no_leftovers(warm_lab)

    size = (run / step_file).stat().st_size  # on the wire: a file over its cap is not written
    stage = tmp_path / "stage"
    stage.mkdir()
    want = rules.Want(step_file, size - 1, record["files"][step_file]["sha256"], size - 1)
    mirror.pull(warm_lab, warm_lab.hosts["mac4"], str(run), stage, [want])
    assert os.listdir(stage) == []
    assert "did not arrive" in mirror.check_staged(stage, [want])[step_file]

    # an old local rsync takes what a hostile sender sends unasked: stand-in, a local rsync that plants
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "rsync").write_text(f'#!/bin/sh\n{shutil.which("rsync")} "$@" || exit $?\n'
                                'for d; do :; done\n'  # the destination, rsync's last argument
                                f'ln -s {secret} "$d/unasked_link"; mkdir "$d/unasked_dir"; echo x > "$d/unasked.bin"\n')
    (fake / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(mirror.MirrorError) as e:
        mirror.mirror_back(warm_lab, prof)
    assert str(e.value).startswith("mac4: the writer sent what mirror-back does not take")
    for words in ("unasked_link is a symbolic link", "unasked_dir is a folder",
                  "unasked.bin is not a file mirror-back asked for"):
        assert words in str(e.value)
    assert tree(mirror_dir) == good and tree(tmp_path / "secret_dir") == outside_dir
    no_leftovers(warm_lab)


# 20 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("20", "the writer's run folder reset to another run (new run_id, lower step)",
                        "the run directory deleted on every host and a new 3-step window trained after a "
                        "5-step run was mirrored; then fab mirror-back, then fab mirror-back --force")
def test_20_writer_reset_to_another_run_is_refused_and_force_keeps_a_dated_copy(warm_lab, profile_dir):
    """mirror-back exits 1 naming both run ids and steps and leaves the mirror as it was; --force
    replaces it and keeps the old mirror, byte for byte, as <name>.replaced-<UTC time>."""
    first = committed(warm_lab, profile_dir, 5)
    env = {"THUNDER_PROFILES": str(profile_dir)}
    assert fab(warm_lab, "mirror-back", "--profile", "run_a", env=env).returncode == 0
    mirror_dir = layout.local(warm_lab).mirror(RUN)
    good = tree(mirror_dir)
    for host in warm_lab.hosts.values():  # the run is reset on every host, as a person would
        shutil.rmtree(Path(host.runs_root) / RUN, ignore_errors=True)
    second = committed(warm_lab, profile_dir, 3)
    assert second["run_id"] != first["run_id"]

    p = fab(warm_lab, "mirror-back", "--profile", "run_a", env=env)
    assert p.returncode == 1, p.stderr
    assert (f"holds run {first['run_id']} at step 5, the writer another run: run {second['run_id']} at step 3"
            in p.stderr), p.stderr
    assert "--force" in p.stderr
    assert tree(mirror_dir) == good

    p = fab(warm_lab, "mirror-back", "--profile", "run_a", "--force", env=env)
    assert p.returncode == 0, p.stderr
    kept = sorted(mirror_dir.parent.glob(f"{RUN}.replaced-*"))
    assert len(kept) == 1 and tree(kept[0]) == good
    now = json.loads((mirror_dir / "checkpoint.json").read_text())
    assert (now["run_id"], now["step"]) == (second["run_id"], 3)
    assert sorted(os.listdir(mirror_dir)) == expected_names(second)
    assert fab(warm_lab, "mirror-back", "--profile", "run_a", env=env).returncode == 0  # same run now
    no_leftovers(warm_lab)


# 21 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("21", "two mirror-backs of one run at once",
                        "two fab mirror-back started together; the writer's rsync sleeps 3 s first "
                        "so that the two overlap")
def test_21_two_mirror_backs_racing_never_interleave(warm_lab, profile_dir, tmp_path):
    """One brings the step home; the other exits 75 naming the lock's holder and touches nothing;
    the mirror is one verified copy, with no staging folder or lock left behind."""
    record = committed(warm_lab, profile_dir, 5)
    slow = tmp_path / "slow_rsync"
    slow.write_text('#!/bin/sh\nsleep 3\nexec rsync "$@"\n')
    slow.chmod(0o755)
    data = yaml.safe_load(Path(warm_lab.path).read_text())
    data["hosts"]["mac4"]["rsync_path"] = str(slow)
    path = Path(warm_lab.path).with_name("inventory_slow_rsync.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    inv = inventory.load(str(path))

    procs = [start_fab(inv, "mirror-back", "--profile", "run_a", env={"THUNDER_PROFILES": str(profile_dir)})
             for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 75], (codes, outs)
    refused = outs[codes.index(75)][1]
    assert "another mirror-back (pid " in refused and "nothing was touched" in refused, refused
    mirror_dir = layout.local(warm_lab).mirror(RUN)
    assert sorted(os.listdir(mirror_dir)) == expected_names(record)
    for name, entry in record["files"].items():
        assert hashlib.sha256((mirror_dir / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert (mirror_dir / "adapters.safetensors").read_bytes() == (mirror_dir / record["step_file"]).read_bytes()
    no_leftovers(warm_lab)
