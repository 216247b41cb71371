"""mirror-back's pure rules and local file work, without a host: what may come home (the lstat
walk), when a mirror may be replaced, how a crash mid-swap is recovered, and writes that never
follow a planted link."""
import os
import signal
import subprocess

import pytest

from thunderlane import mirror, mirror_rules as rules, mirrorfs
from thunderlane.fsutil import atomic_write, real_folder

WANTS = (rules.Want("checkpoint.json", rules.CHECKPOINT_CAP, "c" * 64),
         rules.Want("0000005_adapters.safetensors", 100, "a" * 64, 100),
         rules.Want("handoff_report.md", rules.REPORT_CAP, optional=True))


# the lstat walk ---------------------------------------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    """A staging folder holding one of everything a compromised writer could send."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("local secret\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "checkpoint.json").write_text("{}")
    os.symlink(outside / "secret", stage / "0000005_adapters.safetensors")  # a wanted name, as a link
    os.symlink(outside, stage / "dirlink")
    (stage / "folder").mkdir()
    (stage / "folder" / "inner").write_text("x")
    (stage / "extra.bin").write_bytes(b"x")
    os.mkfifo(stage / "fifo")
    return stage


def test_entries_reads_with_lstat_and_follows_nothing(planted):
    got = {name: (kind, size) for name, kind, size in mirrorfs.entries(planted)}
    assert got["0000005_adapters.safetensors"][0] == "link"
    assert got["dirlink"][0] == "link"
    assert got["folder"][0] == "folder"
    assert got["fifo"][0] == "other"
    assert got["checkpoint.json"] == ("file", 2)
    assert "inner" not in got  # never descended


def test_check_staged_refuses_every_planted_entry_by_name(planted):
    with pytest.raises(mirror.MirrorError) as e:
        mirror.check_staged(planted, WANTS)
    msg = str(e.value)
    for words in ("0000005_adapters.safetensors is a symbolic link", "dirlink is a symbolic link",
                  "folder is a folder", "fifo is not a regular file", "extra.bin is not a file mirror-back asked for"):
        assert words in msg
    assert "checkpoint.json" not in msg


@pytest.mark.parametrize("name,kind,size,words", [
    ("0000005_adapters.safetensors", "file", 101, "over its cap of 100"),
    ("handoff_report.md", "file", rules.REPORT_CAP + 1, "over its cap"),
    ("0000005_adapters.safetensors", "file", 100, None),
    ("adapters.safetensors", "file", 1, "not a file mirror-back asked for"),
])
def test_entry_problem_caps_and_names(name, kind, size, words):
    got = rules.entry_problem(name, kind, size, WANTS)
    assert (got is None) if words is None else (words in got)


def test_content_problem_checks_size_then_sha():
    w = WANTS[1]
    assert "records 100" in rules.content_problem(w, 99, "a" * 64)
    assert "differs from the writer's" in rules.content_problem(w, 100, "b" * 64)
    assert rules.content_problem(w, 100, "a" * 64) is None


def test_a_missing_optional_report_is_fine_a_missing_named_file_is_not(tmp_path):
    (tmp_path / "checkpoint.json").write_text("{}")
    bad = mirror.check_staged(tmp_path, WANTS)
    assert "0000005_adapters.safetensors did not arrive" in bad["0000005_adapters.safetensors"]
    assert "handoff_report.md" not in bad
    assert "differs from the writer's" in bad["checkpoint.json"]


def test_seed_links_only_regular_files_of_the_right_size(tmp_path):
    mirror_dir, stage = tmp_path / "m", tmp_path / "s"
    mirror_dir.mkdir()
    stage.mkdir()
    (tmp_path / "secret").write_bytes(b"s" * 100)
    os.symlink(tmp_path / "secret", mirror_dir / "checkpoint.json")  # a planted link under a wanted name
    (mirror_dir / "0000005_adapters.safetensors").write_bytes(b"a" * 99)  # not the recorded size
    (mirror_dir / "handoff_report.md").write_text("report")
    assert mirrorfs.seed(mirror_dir, stage, WANTS) == ["handoff_report.md"]
    assert os.lstat(stage / "handoff_report.md").st_ino == os.lstat(mirror_dir / "handoff_report.md").st_ino
    assert os.listdir(stage) == ["handoff_report.md"]


def test_reads_never_follow_a_link(tmp_path):
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", tmp_path / "link")
    with pytest.raises(OSError):
        mirrorfs.sha256_nofollow(tmp_path / "link")
    with pytest.raises(OSError):
        mirrorfs.read_nofollow(tmp_path / "link")
    assert "checkpoint.json" in mirror.current_record(tmp_path)  # no checkpoint: unreadable, said so


# the refusal rules ------------------------------------------------------------------------------

def rec(run_id, step):
    return {"run_id": run_id, "step": step}


@pytest.mark.parametrize("current,incoming,words", [
    (None, rec("a", 5), None),
    (rec("a", 5), rec("a", 5), None),
    (rec("a", 5), rec("a", 10), None),
    (rec("a", 20), rec("a", 5), "holds run a at step 20, later than the writer's run a at step 5"),
    (rec("a", 20), rec("b", 25), "holds run a at step 20, the writer another run: run b at step 25"),
    (rec("a", 20), rec("b", 5), "the writer another run: run b at step 5"),
    ("checkpoint.json: no such file", rec("a", 5), "cannot be read (checkpoint.json: no such file)"),
    (rec("a", True), rec("a", 5), "holds run a at step None, the writer run a at step 5: the steps cannot"),
])
def test_replacement_refusal(current, incoming, words):
    got = rules.replacement_refusal(current, incoming)
    assert (got is None) if words is None else (words in got), got


# the swap and its recovery ----------------------------------------------------------------------

def folder(path, **files):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_swap_keeps_the_old_mirror_as_a_dated_copy_when_asked(tmp_path):
    m = folder(tmp_path / "run", a="old")
    s = folder(tmp_path / ".incoming" / "run" / "stage.x", a="new")
    keep = mirrorfs.dated_copy(m, now=0)
    assert keep.name == "run.replaced-19700101T000000Z"
    s.chmod(0o700)
    mirrorfs.swap(s, m, keep_as=keep)
    assert (m / "a").read_text() == "new" and (keep / "a").read_text() == "old"
    assert m.stat().st_mode & 0o777 == mirrorfs.folder_mode()
    assert mirrorfs.dated_copy(m, now=0).name == "run.replaced-19700101T000000Z-2"


def test_crash_between_the_renames_is_restored_at_the_next_start(tmp_path):
    m = tmp_path / "run"
    folder(mirrorfs.old_copy(m), a="old")  # the mirror was moved aside, the new one never arrived
    folder(tmp_path / ".incoming" / "run" / "stage.x", a="half")
    notes = mirrorfs.recover(m, tmp_path / ".incoming" / "run")
    assert (m / "a").read_text() == "old"
    assert not os.path.lexists(mirrorfs.old_copy(m))
    assert os.listdir(tmp_path / ".incoming" / "run") == []
    assert any("restored" in n for n in notes) and any("stage.x" in n for n in notes)


def test_crash_after_the_renames_is_finished_at_the_next_start(tmp_path):
    m = folder(tmp_path / "run", a="new")
    folder(mirrorfs.old_copy(m), a="old")
    notes = mirrorfs.recover(m, tmp_path / ".incoming" / "run")
    assert (m / "a").read_text() == "new" and not os.path.lexists(mirrorfs.old_copy(m))
    assert notes == [f"removed {mirrorfs.old_copy(m).name}, left by a swap that had finished"]


# the lock ---------------------------------------------------------------------------------------

def test_a_second_mirror_back_is_refused_while_the_first_holds_the_lock(tmp_path):
    paths = [tmp_path / "host.lock", tmp_path / "run.lock"]
    with mirror.locked(paths):
        with pytest.raises(mirror.MirrorBusy, match=f"pid {os.getpid()}"):
            with mirror.locked(paths[1:]):
                pass
        assert all(p.is_dir() for p in paths)  # the refused one released nothing of the holder's
    assert not any(p.exists() for p in paths)
    with mirror.locked(paths):
        pass


def test_a_lock_another_process_took_over_meanwhile_is_not_removed_at_the_end(tmp_path):
    path = tmp_path / "run.lock"
    with mirror.locked([path]):
        (path / "pid").write_text(f"{os.getppid()}\n")  # as if another process now owned it
        (path / "started").unlink()
    assert path.is_dir() and (path / "pid").read_text().strip() == str(os.getppid())


def test_the_size_cap_stops_a_local_writer_that_goes_past_it(tmp_path):
    out = tmp_path / "big"
    p = subprocess.run(["dd", "if=/dev/zero", f"of={out}", "bs=5000", "count=1"],
                       preexec_fn=lambda: mirror._cap_files(1000), capture_output=True)
    assert p.returncode == -signal.SIGXFSZ, p  # as rsync would be: killed, not merely refused
    assert out.stat().st_size <= 1000


# writes that never follow a link ----------------------------------------------------------------

def test_atomic_write_replaces_a_planted_link_never_writes_through_it(tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("keep\n")
    d = tmp_path / "mirror"
    d.mkdir()
    for name in ("handoff_report.md", ".handoff_report.md.tmp", f".handoff_report.md.tmp{os.getpid()}"):
        os.symlink(canary, d / name)
    atomic_write(d / "handoff_report.md", "report\n")
    assert canary.read_text() == "keep\n"
    assert not os.path.islink(d / "handoff_report.md") and (d / "handoff_report.md").read_text() == "report\n"
    assert sorted(os.listdir(d)) == sorted([".handoff_report.md.tmp", f".handoff_report.md.tmp{os.getpid()}",
                                            "handoff_report.md"])  # no private temp folder left


def test_real_folder_refuses_a_link_on_the_way(tmp_path):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "run_a")
    with pytest.raises(OSError, match="run_a is a link"):
        real_folder(root / "run_a", root)
    assert real_folder(root / ".reports" / "run_a", root).is_dir()


# what to pull -----------------------------------------------------------------------------------

class RunFile:
    def __init__(self, size):
        self.size = size


def format2(**files):
    return {"format": 2, "step": 5, "run_id": "r", "step_file": "0000005_adapters.safetensors",
            "state_file": "0000005_lane_state.safetensors",
            "files": {name: {"sha256": "a" * 64, "size": size} for name, size in files.items()}}


STEP5 = {"0000005_adapters.safetensors": 100, "0000005_lane_state.safetensors": 50, "adapter_config.json": 9}


def test_wanted_is_checkpoint_json_the_named_files_at_their_size_and_capped_reports():
    writer = {**{n: RunFile(s) for n, s in STEP5.items()}, "handoff_report.md": RunFile(10),
              "handoff_report.json": RunFile(rules.REPORT_CAP + 1), "extra.bin": RunFile(1)}
    got = rules.wanted(format2(**STEP5), "c" * 64, writer)
    assert [(w.name, w.cap, w.size) for w in got] == [
        ("checkpoint.json", rules.CHECKPOINT_CAP, None), ("0000005_adapters.safetensors", 100, 100),
        ("0000005_lane_state.safetensors", 50, 50), ("adapter_config.json", 9, 9),
        ("handoff_report.md", rules.REPORT_CAP, None)]  # the oversized report and the extra file stay
    assert got[0].sha256 == "c" * 64 and got[-1].optional


@pytest.mark.parametrize("record,writer,words", [
    (format2(**STEP5, **{"../x": 1}), {}, "not a plain file name"),
    (format2(**STEP5, **{"adapters.safetensors": 1}), {}, "a name mirror-back writes itself"),
    (format2(**STEP5, **{"Adapters.Safetensors": 1}), {}, "case aside"),  # one file on APFS
    (format2(**STEP5, **{"0000005_ADAPTERS.safetensors": 1}), {}, "lists twice"),
    (format2(**STEP5, **{"big.bin": 1 << 63}), {}, "over the 1099511627776 bytes"),
    (format2(**STEP5), {"0000005_adapters.safetensors": RunFile(10 << 30)}, "records 100"),
    ({**format2(**STEP5), "format": 1}, {}, "does not list its files usably"),
])
def test_wanted_refuses_a_list_it_cannot_trust(record, writer, words):
    with pytest.raises(rules.Refused, match=words):
        rules.wanted(record, "c" * 64, writer)


def test_the_checkpoint_json_that_arrives_must_be_the_record_that_chose_the_files(tmp_path):
    """A host may report one record and the sha256 of another file: what arrived is what counts."""
    import json
    from types import SimpleNamespace
    record = {"format": 2, "step": 5, "run_id": "r1"}
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    mirror._same_record(SimpleNamespace(name="mac4"), tmp_path, record)
    (tmp_path / "checkpoint.json").write_text(json.dumps(dict(record, step=10**9)))
    with pytest.raises(mirror.MirrorError, match="mac4: the checkpoint.json that arrived is not the one"):
        mirror._same_record(SimpleNamespace(name="mac4"), tmp_path, record)
    (tmp_path / "checkpoint.json").unlink()
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "checkpoint.json")
    with pytest.raises(mirror.MirrorError, match="not the one"):
        mirror._same_record(SimpleNamespace(name="mac4"), tmp_path, record)


def test_a_later_mirror_keeps_the_runs_evaluations(tmp_path):
    """fab evaluate's results of the current mirror go into the staging folder before the swap;
    nothing else does (not another file, not a link, not a name evaluate does not write)."""
    from thunderlane import mirrorfs
    mirror, staging = tmp_path / "run", tmp_path / "stage"
    mirror.mkdir()
    staging.mkdir()
    (mirror / "eval_step5_test.json").write_text('{"step": 5}')
    (mirror / "eval_step10_valid.json").write_text('{"step": 10}')
    (mirror / "eval_step10_test_first6.json").write_text('{"rows": 6}')
    (mirror / "eval_step5_train.json").write_text("not a split evaluate writes")
    (mirror / "adapters.safetensors").write_text("old adapters")
    (tmp_path / "elsewhere.json").write_text("{}")
    (mirror / "eval_step7_test.json").symlink_to(tmp_path / "elsewhere.json")
    carried = ["eval_step10_test_first6.json", "eval_step10_valid.json", "eval_step5_test.json"]
    assert sorted(mirrorfs.carry_evaluations(mirror, staging)) == carried
    assert sorted(p.name for p in staging.iterdir()) == carried
    assert (staging / "eval_step5_test.json").read_text() == '{"step": 5}'
    assert mirrorfs.carry_evaluations(tmp_path / "absent", staging) == []
