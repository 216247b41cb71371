import json
import shutil

import pytest

from thunderlane import dataset
from thunderlane.facts import DatasetFacts
from thunderlane.onhost import probe
from thunderlane.lab.fixtures.corpus import build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "nko"
    build_corpus(root, rows=60)
    return root


def dataset_facts(root):
    """The probe's facts of ``root``, typed as the judges take them."""
    return DatasetFacts.from_json(probe.dataset_facts(root))


def facts_of(src, tmp_path, edit=None):
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    if edit:
        edit(root)
    return dataset_facts(str(root))


def test_identical_copy_is_ok(corpus, tmp_path):
    ref = dataset_facts(str(corpus))
    assert dataset.judge("local", ref).ok
    r = dataset.judge("mac4", facts_of(corpus, tmp_path), ref)
    assert r.ok and r.verdict == "ok"
    assert r.figures["rows"] == 60 and r.figures["digest"] == dataset.digest(ref)


def replace_row(root, name, line, new_row):
    path = root / name
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = new_row + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def test_same_line_count_different_content_is_caught(corpus, tmp_path):
    """A row changed on the host, manifest updated to match: only the content comparison sees it."""
    def edit(root):
        row = {"messages": [{"role": "user", "content": "ߊ"}, {"role": "assistant", "content": "ߋ"}]}
        replace_row(root, "valid.jsonl", 3, json.dumps(row, ensure_ascii=False))
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["files"]["valid.jsonl"] = probe.jsonl_facts(root / "valid.jsonl")
        (root / "manifest.json").write_text(json.dumps(manifest))
    ref = dataset_facts(str(corpus))
    r = dataset.judge("mac5", facts_of(corpus, tmp_path, edit), ref)
    assert not r.ok and r.verdict == "differs"
    assert "valid.jsonl (same line count)" in r.detail


def test_edit_without_manifest_update_is_a_manifest_mismatch(corpus, tmp_path):
    def edit(root):
        replace_row(root, "train.jsonl", 1, '{"text": "x"}')
    r = dataset.judge("mac5", facts_of(corpus, tmp_path, edit), dataset_facts(str(corpus)))
    assert r.verdict in ("manifest", "invalid") and not r.ok


def test_bad_row_is_reported_host_file_line(corpus, tmp_path):
    r = dataset.judge("mac4", facts_of(corpus, tmp_path,
                                       lambda root: replace_row(root, "test.jsonl", 4, '{"messages": [')))
    assert r.verdict == "invalid" and r.detail.startswith("mac4:test.jsonl:4: not JSON")


def test_missing_file_and_absent_root(corpus, tmp_path):
    r = dataset.judge("mac4", facts_of(corpus, tmp_path, lambda root: (root / "manifest.json").unlink()))
    assert r.verdict == "missing" and "manifest.json" in r.detail
    r = dataset.judge("mac4", dataset_facts(str(tmp_path / "nowhere")))
    assert r.verdict == "absent" and "nowhere" in r.detail


def test_broken_reference_makes_hosts_unchecked(corpus, tmp_path):
    ref = facts_of(corpus, tmp_path, lambda root: (root / "test.jsonl").unlink())
    assert not dataset.judge("local", ref).ok
    r = dataset.judge("mac4", dataset_facts(str(corpus)), ref)
    assert r.verdict == "unchecked" and not r.ok


def test_empty_train_split_is_invalid(corpus, tmp_path):
    r = dataset.judge("mac4", facts_of(corpus, tmp_path, lambda root: (root / "train.jsonl").write_bytes(b"")))
    assert r.verdict == "invalid" and "train.jsonl" in r.detail


def summed(root):
    """A host's facts as ``dataset --sums`` reports them: no row read."""
    return DatasetFacts.from_json(probe.dataset_facts(str(root), rows=False))


def test_equal_bytes_are_judged_by_local_rows(corpus, tmp_path):
    ref = dataset_facts(str(corpus))
    host = summed(facts_of(corpus, tmp_path).root)
    assert dataset.unchecked(host) == list(probe.DATA_FILES)
    assert dataset.judge("mac4", host, ref).verdict == "unchecked"
    r = dataset.judge("mac4", dataset.inherit(host, ref), ref)
    assert r.ok and r.verdict == "ok" and dataset.unchecked(dataset.inherit(host, ref)) == []


def test_equal_bad_bytes_name_the_host_file_and_line(corpus, tmp_path):
    """Local and mac4 hold the same broken file: mac4's verdict, taken from local's, names mac4."""
    broken = facts_of(corpus, tmp_path, lambda root: replace_row(root, "test.jsonl", 4, '{"messages": ['))
    ref = dataset_facts(broken.root)
    r = dataset.judge("mac4", dataset.inherit(summed(broken.root), ref), ref)
    assert r.verdict == "invalid" and r.detail.startswith("mac4:test.jsonl:4: not JSON")


def test_differing_bytes_stay_unchecked(corpus, tmp_path):
    ref = dataset_facts(str(corpus))
    host = dataset.inherit(summed(facts_of(corpus, tmp_path, lambda root: replace_row(
        root, "valid.jsonl", 2, '{"text": "x"}')).root), ref)
    assert dataset.unchecked(host) == ["valid.jsonl"]
    r = dataset.judge("mac4", host, ref)
    assert r.verdict == "unchecked" and r.detail == "mac4:valid.jsonl: rows not validated (summed only)"
