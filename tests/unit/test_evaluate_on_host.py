"""fab evaluate --on HOST's pure parts: the host's answer read into local's scoring values, errors
naming the host (and file:line), the relay of the host's progress, and the host half's own checks
(the adapters' sha256, the result written only beside a checkpoint.json, atomically)."""
import hashlib
import io
import json
import subprocess
import sys

import pytest

from thunderlane import onhost
from thunderlane.onhost import rows as onhost_rows
from thunderlane.evaluate import host_answer, rows
from thunderlane.evaluate.on_host import Relay
from thunderlane.evaluate.run import EvaluateError
from thunderlane.onhost import eval_host

USER = "Correct the N'Ko ASR hypothesis:\n"


def chat(hyp, ref):
    return [{"role": "user", "content": USER + hyp}, {"role": "assistant", "content": ref}]


def answer(*docs):
    return "".join(json.dumps(d) + "\n" for d in docs)


GOOD = [{"kind": "split", "path": "/h/data/test.jsonl", "rows": 2, "bad": [["/h/data/test.jsonl:2", "empty line"]]},
        {"kind": "row", "where": "/h/data/test.jsonl:1", "messages": chat("ߓߊ", "ߓߊ߫"), "correction": "ߓߊ߫"},
        {"kind": "row", "where": "/h/data/test.jsonl:3", "messages": chat("ߣߌ", "ߣߌ"), "correction": "ߣߌߌ"},
        {"kind": "done", "seconds": 2.0, "test_loss": 3.5, "peak_rss_mb": 812.0}]


def test_a_host_answer_becomes_the_split_and_corrections_local_scores():
    a = host_answer.parse("mac4", 0, answer(*GOOD), "")
    assert [r.where for r in a.split.rows] == ["mac4:/h/data/test.jsonl:1", "mac4:/h/data/test.jsonl:3"]
    assert a.split.bad == (("mac4:/h/data/test.jsonl:2", "empty line"),)
    assert a.split.instruction == USER and a.split.hypothesis(a.split.rows[0]) == "ߓߊ"
    assert a.corrections == ("ߓߊ߫", "ߣߌߌ") and (a.seconds, a.test_loss, a.peak_rss_mb) == (2.0, 3.5, 812.0)


@pytest.mark.parametrize("code,stdout,stderr,message", [
    (2, answer({"kind": "error", "message": "/h/data/test.jsonl: the split is empty: nothing to evaluate"}), "",
     "mac4: /h/data/test.jsonl: the split is empty"),
    (127, "", "bash: /venv/bin/python: No such file or directory", "mac4: no interpreter (exit 127): bash: /venv"),
    (1, answer(GOOD[0]), "Traceback...\nMemoryError", "mac4: the evaluation failed with exit 1: MemoryError"),
    # a run killed mid-line, or a C library writing to stdout before a crash: the exit code comes first
    (137, answer(GOOD[0]) + '{"kind": "row", "whe', "evaluate: 1/2 rows\nKilled", "mac4: the evaluation failed "
     "with exit 137: Killed"),
    (1, "MTL warning: no device\n", "Segmentation fault", "mac4: the evaluation failed with exit 1: Segmentation"),
    (2, "not a refusal\n", "Traceback", "mac4: the evaluation failed with exit 2: Traceback"),
    (0, answer(*GOOD[:3], dict(GOOD[3], peak_rss_mb="812")), "", "mac4: the answer is malformed: ValueError: "
     "peak_rss_mb is '812'"),
    (0, answer(GOOD[0]) + "Loading weights\n", "", "mac4: answer line 2 is not JSON: 'Loading weights'"),
    (0, answer(*GOOD[:2], GOOD[3]), "", "mac4: the answer announced 2 rows and sent 1"),
    (0, answer(*GOOD[:3]), "", "mac4: the answer is not split, rows, done"),
    (0, answer(GOOD[0], dict(GOOD[1], messages=[{"role": "user", "content": "x"}]), *GOOD[2:]), "",
     "mac4: the answer is malformed: ValueError: row /h/data/test.jsonl:1: 1 turns, not 2"),
    (0, answer(GOOD[0], {k: v for k, v in GOOD[1].items() if k != "correction"}, *GOOD[2:]), "",
     "mac4: the answer is malformed: KeyError"),
])
def test_a_refused_failed_or_malformed_answer_names_the_host(code, stdout, stderr, message):
    with pytest.raises(EvaluateError) as e:
        host_answer.parse("mac4", code, stdout, stderr)
    assert str(e.value).startswith(message)


def test_the_save_answer_names_the_written_path_or_the_hosts_refusal():
    assert host_answer.saved("mac4", 0, answer({"kind": "saved", "path": "/r/eval_step5_test.json"}), "") == \
        "/r/eval_step5_test.json"
    with pytest.raises(EvaluateError, match="^mac4: /r/x.json: not an evaluation's name"):
        host_answer.saved("mac4", 2, answer({"kind": "error", "message": "/r/x.json: not an evaluation's name"}), "")
    with pytest.raises(EvaluateError, match="^mac4: the save answered no path"):
        host_answer.saved("mac4", 0, "", "")


def test_the_bundle_answers_on_a_copy_of_fd_1_and_sends_anything_else_to_stderr():
    """A C-level write to fd 1 (mlx, Metal) and a library's print land on stderr, not in the answer."""
    code = ("import os, sys\nfrom thunderlane.onhost import eval_host as e\ne.answer_stream()\n"
            "os.write(1, b'C-level warning\\n'); print('a print')\ne.emit('done', seconds=1.0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == '{"kind": "done", "seconds": 1.0}\n'
    assert "C-level warning" in p.stderr and "a print" in p.stderr


def test_the_relay_prefixes_each_whole_line_with_the_host_as_it_comes():
    out = io.StringIO()
    relay = Relay("mac4", out)
    relay.write("evaluate: 1/3 rows, 0.50 rows/s, ETA 4s\nevaluate: 2/")
    assert out.getvalue() == "mac4: evaluate: 1/3 rows, 0.50 rows/s, ETA 4s\n"  # the half line waits
    relay.write("3 rows, 0.50 rows/s, ETA 2s\n\n")
    relay.write("Killed")
    relay.close()
    assert out.getvalue().splitlines()[1:] == ["mac4: evaluate: 2/3 rows, 0.50 rows/s, ETA 2s", "mac4: Killed"]


def test_the_host_loads_copies_of_the_adapters_whose_sha256_is_the_records(tmp_path):
    (tmp_path / "0000005_adapters.safetensors").write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    folder = eval_host.private_adapters(str(tmp_path), {"adapters.safetensors": ("0000005_adapters.safetensors", good)})
    try:
        copy = tmp_path.joinpath(folder, "adapters.safetensors")
        assert copy.read_bytes() == b"weights" and not copy.is_symlink()
    finally:
        import shutil
        shutil.rmtree(folder)
    with pytest.raises(eval_host.Refused, match=r"0000005_adapters.safetensors: sha256 .* checkpoint.json records 000000"):
        eval_host.private_adapters(str(tmp_path), {"adapters.safetensors": ("0000005_adapters.safetensors", "0" * 64)})


def test_the_host_writes_the_result_only_beside_a_checkpoint_and_whole(tmp_path):
    path = tmp_path / "eval_step5_test_first3.json"
    with pytest.raises(eval_host.Refused, match="not an evaluation's name beside a checkpoint.json"):
        eval_host.save(str(path), b'{"on": "mac4"}')  # no checkpoint.json here
    (tmp_path / "checkpoint.json").write_text("{}")
    with pytest.raises(eval_host.Refused, match="not an evaluation's name"):
        eval_host.save(str(tmp_path / "checkpoint.json"), b'{"on": "mac4"}')
    with pytest.raises(eval_host.Refused, match="not JSON"):
        eval_host.save(str(path), b'{"on": "mac')  # a cut stream
    assert not path.exists()
    eval_host.save(str(path), json.dumps({"on": "mac4", "reference": "ߓߊ߫"}).encode())
    assert json.loads(path.read_text(encoding="utf-8")) == {"on": "mac4", "reference": "ߓߊ߫"}
    assert "ߓߊ߫" in path.read_text(encoding="utf-8")  # written as UTF-8, as local writes its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", path.name]


def test_the_host_reads_rows_with_the_same_code_as_local():
    """One reader for both sides: the bundle ships onhost/rows.py, which evaluate.rows is."""
    assert rows.parse is onhost_rows.parse and rows.load is onhost_rows.load_split
    assert "rows" in onhost.EVAL and "decode" in onhost.EVAL
    compile(onhost.eval_source(), "eval bundle", "exec")


def test_mirror_back_brings_the_writers_evaluations_at_their_probed_size_and_sha256():
    from thunderlane import mirror_rules
    from thunderlane.facts import RunFile
    record = {"format": 2, "step": 5, "step_file": "0000005_adapters.safetensors",
              "state_file": "0000005_lane_state.safetensors",
              "files": {"0000005_adapters.safetensors": {"sha256": "a" * 64, "size": 10},
                        "0000005_lane_state.safetensors": {"sha256": "9" * 64, "size": 10}}}
    files = {"0000005_adapters.safetensors": RunFile(10, "a" * 64), "eval_step5_test.json": RunFile(99, "b" * 64),
             "eval_step3_valid_first6.json": RunFile(7, "c" * 64), "eval_step5_train.json": RunFile(5, "d" * 64),
             "eval_step5_test.json.bak": RunFile(5, "e" * 64),
             "eval_step4_test.json": RunFile(mirror_rules.EVAL_CAP + 1, "f" * 64)}
    wants = {w.name: w for w in mirror_rules.wanted(record, "0" * 64, files)}
    assert sorted(n for n in wants if n.startswith("eval")) == ["eval_step3_valid_first6.json", "eval_step5_test.json"]
    w = wants["eval_step5_test.json"]
    assert (w.sha256, w.size, w.optional) == ("b" * 64, 99, True)


def evaluation(folder, name, on, when, rows=3):
    (folder / name).write_text(json.dumps({"on": on, "rows": rows, **({"evaluated_at": when} if when else {})}))


def test_a_clash_keeps_both_evaluations_the_newer_under_the_name(tmp_path):
    """The writer's result (pulled into staging) and the mirror's of the same name: neither is lost."""
    from thunderlane.evaluate import carry
    mirror, staging = tmp_path / "run", tmp_path / "stage"
    mirror.mkdir()
    staging.mkdir()
    evaluation(mirror, "eval_step5_test.json", "local", "2026-11-30T01:00:00.000000+00:00")
    evaluation(staging, "eval_step5_test.json", "mac4", "2026-11-30T02:00:00.000000+00:00")  # the host's, newer
    evaluation(mirror, "eval_step5_valid.json", "local", "2026-11-30T03:00:00.000000+00:00")  # local's, newer
    evaluation(staging, "eval_step5_valid.json", "mac4", None)                                 # undated: older
    evaluation(mirror, "eval_step5_test_first3.json", "mac4", "2026-11-30T01:00:00.000000+00:00")
    evaluation(staging, "eval_step5_test_first3.json", "mac4", "2026-11-30T01:00:00.000000+00:00")  # the same
    evaluation(mirror, "eval_step4_test.json", "local", None)  # an earlier step's: carried as before
    written = carry.carry(mirror, staging)
    got = {p.name: json.loads(p.read_text()) for p in staging.iterdir()}
    assert got["eval_step5_test.json"]["on"] == "mac4"
    assert got["eval_step5_test.local-2026-11-30T01-00-00-000000-00-00.json"]["on"] == "local"
    assert got["eval_step5_valid.json"]["on"] == "local" and got["eval_step5_valid.mac4-undated.json"]["on"] == "mac4"
    assert got["eval_step4_test.json"]["on"] == "local" and len(got) == 6
    assert sorted(written) == sorted(set(got) - {"eval_step5_test_first3.json", "eval_step5_test.json"})
    from thunderlane import mirrorfs
    assert all(mirrorfs.EVALUATIONS.fullmatch(n) for n in got)  # the next mirror-back carries them on


def test_a_commands_stdin_goes_in_chunks_not_a_character_per_read():
    """Invoke asks a non-terminal in_stream for 1 character and sleeps 10 ms between reads: the
    result file (tens of KiB) took minutes to reach the host before."""
    from thunderlane.evaluate.on_host import Chunks
    stream = Chunks("x" * 100_000)
    assert [len(stream.read(1)) for _ in range(3)] == [65536, 100_000 - 65536, 0]


def test_an_evaluation_saved_again_during_mirror_back_stays_behind_with_a_note(tmp_path):
    """The writer's result changed between the probe and rsync: that file stays behind (named in a
    note); a required file that does not match still fails the whole mirror-back."""
    from thunderlane.mirror import check_staged, drop_changed
    from thunderlane.mirror_rules import Want
    (tmp_path / "eval_step5_test.json").write_text('{"on": "mac4", "saved": "again"}\n')
    (tmp_path / "eval_step4_test.json").write_text("{}\n")
    (tmp_path / "0000005_adapters.safetensors").write_bytes(b"x" * 10)
    wants = [Want("eval_step5_test.json", 4096, "b" * 64, 99, optional=True),
             Want("eval_step4_test.json", 4096, hashlib.sha256(b"{}\n").hexdigest(), 3, optional=True),
             Want("0000005_adapters.safetensors", 10, "a" * 64, 10)]
    bad = check_staged(tmp_path, wants)
    assert "is 33 bytes, the writer's probe saw 99" in bad["eval_step5_test.json"]
    notes = drop_changed(tmp_path, wants, bad)
    assert notes == ["eval_step5_test.json changed during mirror-back; run mirror-back again to bring it"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000005_adapters.safetensors", "eval_step4_test.json"]
    assert list(bad) == ["0000005_adapters.safetensors"]  # still the copy's failure
    (tmp_path / "eval_step4_test.json").write_text("{ }\n")  # seeded from the mirror: pulled again, not dropped
    assert drop_changed(tmp_path, wants, check_staged(tmp_path, wants), spare=["eval_step4_test.json"]) == []


def test_a_clash_whose_aside_name_is_taken_gets_a_number_and_asides_keep_the_pattern(tmp_path):
    """The aside's name is taken with other bytes: a numbered name, nothing dropped; an aside of an
    aside is one dotted part still (the next mirror-back carries it on)."""
    from thunderlane import mirrorfs
    from thunderlane.evaluate import carry
    mirror, staging = tmp_path / "run", tmp_path / "stage"
    mirror.mkdir()
    staging.mkdir()
    t1, t2 = "2026-11-30T01:00:00+00:00", "2026-11-30T02:00:00+00:00"
    evaluation(mirror, "eval_step5_test.json", "local", t1)                              # older: steps aside
    evaluation(mirror, "eval_step5_test.local-2026-11-30T01-00-00-00-00.json", "local", t1, rows=6)  # taken
    evaluation(staging, "eval_step5_test.json", "mac4", t2)
    evaluation(mirror, "eval_step5_valid.mac4-x.json", "mac4", t1)                        # an aside, both hold it
    evaluation(staging, "eval_step5_valid.mac4-x.json", "mac4", t2, rows=6)
    carry.carry(mirror, staging)
    got = {p.name: json.loads(p.read_text()) for p in staging.iterdir()}
    assert got["eval_step5_test.json"]["on"] == "mac4"
    assert got["eval_step5_test.local-2026-11-30T01-00-00-00-00.json"]["rows"] == 6
    assert got["eval_step5_test.local-2026-11-30T01-00-00-00-00-2.json"] == {"on": "local", "rows": 3,
                                                                             "evaluated_at": t1}
    assert got["eval_step5_valid.mac4-x.json"]["rows"] == 6
    assert got["eval_step5_valid.mac4-2026-11-30T01-00-00-00-00.json"]["evaluated_at"] == t1
    assert len(got) == 5 and all(mirrorfs.EVALUATIONS.fullmatch(n) for n in got)
    assert carry.carry(mirror, staging) == [] and len(list(staging.iterdir())) == 5  # again: nothing more
