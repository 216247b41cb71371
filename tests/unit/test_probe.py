import hashlib
import json
import struct
import subprocess
import sys

import pytest

from thunderlane import onhost
from thunderlane.onhost import probe
from tests.unit.builders import safetensors_bytes


def test_git_blob_sha1_matches_git(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello\n")
    # `git hash-object` of "hello\n" is a well-known value
    assert probe.git_blob_sha1_file(f) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert probe.sha256_file(f) == hashlib.sha256(b"hello\n").hexdigest()


def test_blob_hash_matches_by_name_length(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert probe.blob_hash_matches(f, hashlib.sha256(b"x" * 10).hexdigest()) == \
        (True, hashlib.sha256(b"x" * 10).hexdigest())
    assert probe.blob_hash_matches(f, "0" * 40)[0] is False
    assert probe.blob_hash_matches(f, "not-a-hash") == (False, None)


def test_safetensors_whole_file_passes(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(safetensors_bytes({"w": ("F16", [2, 3], bytes(12)), "v": ("U8", [5], bytes(5))}))
    ok, reason = probe.safetensors_check(f)
    assert ok, reason
    assert "2 tensors" in reason


@pytest.mark.parametrize("cut", [1, 7, 20, -1])
def test_safetensors_truncated_file_fails(tmp_path, cut):
    data = safetensors_bytes({"w": ("F32", [4], bytes(16))})
    f = tmp_path / "m.safetensors"
    f.write_bytes(data[:cut] if cut > 0 else data[:cut])
    assert probe.safetensors_check(f)[0] is False


def test_safetensors_extra_bytes_and_gaps_fail(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(safetensors_bytes({"w": ("F32", [4], bytes(16))}) + b"\0")
    assert "cover" in probe.safetensors_check(f)[1]
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    assert "starts at 4" in probe.safetensors_check(f)[1]
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    assert probe.safetensors_check(f)[0] is False


def test_safetensors_absurd_header_length(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "does not fit" in probe.safetensors_check(f)[1]


CHAT = {"messages": [{"role": "user", "content": "ߊ"}, {"role": "assistant", "content": "ߋ"}]}


@pytest.mark.parametrize("row,fmt", [(CHAT, "chat"), ({"prompt": "a", "completion": "b"}, "completions"),
                                     ({"text": "abc"}, "text")])
def test_row_formats(row, fmt):
    assert probe.row_format(row) == fmt


@pytest.mark.parametrize("row,why", [
    ([1, 2], "not a JSON object"), ({"foo": 1}, "no 'messages'"),
    ({"messages": []}, "non-empty"), ({"messages": [{"role": "bot", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 3}]}, "content"),
    ({"messages": [{"role": "user", "content": "x"}]}, "assistant"), ({"text": ""}, "text")])
def test_rows_mlx_lm_would_reject(row, why):
    with pytest.raises(ValueError, match=why):
        probe.row_format(row)


def write_lines(path, lines, end="\n"):
    path.write_bytes(end.join(lines).encode() + end.encode() if lines else b"")


def test_jsonl_facts_counts_and_hashes(tmp_path):
    f = tmp_path / "train.jsonl"
    lines = [json.dumps(CHAT, ensure_ascii=False)] * 3
    write_lines(f, lines)
    facts = probe.jsonl_facts(f)
    assert facts["lines"] == 3 and facts["bytes"] == f.stat().st_size
    assert facts["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert facts["format"] == "chat" and facts["bad"] is None


@pytest.mark.parametrize("content,line,why", [
    (b'{"text": "a"}\n{"text": "b"\n', 2, "not JSON"),
    (b'{"text": "a"}\n\n', 2, "not JSON"),
    (b'{"text": "a"}\n{"text": "\xff"}\n', 2, "not UTF-8"),
    (b'{"text": "a"}\n{"prompt": "a", "completion": "b"}\n', 2, "completions row in a text file"),
    (b'{"text": "a"}\n{"text": "b"}', 2, "no newline"),
    (b'', 0, "empty"),
])
def test_jsonl_first_bad_row(tmp_path, content, line, why):
    f = tmp_path / "valid.jsonl"
    f.write_bytes(content)
    bad = probe.jsonl_facts(f)["bad"]
    assert bad["line"] == line and why in bad["reason"]


def test_probe_runs_as_a_standalone_script(tmp_path):
    """The probe is sent as source to hosts: it must run with nothing but the stdlib."""
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    src = onhost.probe_source()
    out = subprocess.run([sys.executable, "-I", "-S", "-c", src, "dataset", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    facts = json.loads(out)
    assert facts["files"]["train.jsonl"]["lines"] == 1
    assert facts["files"]["valid.jsonl"] == {"present": False}
    usage = subprocess.run([sys.executable, "-c", src, "bogus"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_cache_root_resolution(monkeypatch):
    assert probe.resolve_cache_root("/x/hub") == ("/x/hub", "inventory")
    root, how = probe.resolve_cache_root(None)
    assert how in ("huggingface_hub", "HF_HUB_CACHE", "HF_HOME", "default") and root.startswith("/")
