"""The memo of local's row verdicts: a hit gives what a parse gives, anything else re-parses."""
import shutil

import pytest

from thunderlane import dataset, rowmemo
from thunderlane.facts import DatasetFacts
from thunderlane.lab.fixtures.corpus import build_corpus
from thunderlane.onhost import probe

KEY = rowmemo.validator("probe source", "/usr/bin/python3")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "nko"
    build_corpus(root, rows=40)
    return root


def copy(src, tmp_path, edit=None):
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    if edit:
        edit(root)
    return root


def break_row(root, name="valid.jsonl", line=3, text='{"messages": ['):
    path = root / name
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def parsed(root):
    return DatasetFacts.from_json(probe.dataset_facts(str(root)))


def summed(root):
    return DatasetFacts.from_json(probe.dataset_facts(str(root), rows=False))


@pytest.mark.parametrize("edit", [None, break_row], ids=["good", "bad"])
def test_a_hit_reports_what_a_parse_reports(corpus, tmp_path, edit):
    root = copy(corpus, tmp_path, edit)
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(root))
    hit = memo.recall(summed(root))
    assert hit == parsed(root) and dataset.unchecked(hit) == []
    for ref in (None, hit):
        assert dataset.judge("local", hit, ref) == dataset.judge("local", parsed(root), ref)
    if edit:
        assert dataset.judge("local", hit).detail.startswith("local:valid.jsonl:3: not JSON")


def test_changed_bytes_miss(corpus, tmp_path):
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(corpus))
    assert dataset.unchecked(memo.recall(summed(copy(corpus, tmp_path, break_row)))) == ["valid.jsonl"]


def test_changed_validator_misses(corpus, tmp_path):
    rowmemo.Memo(tmp_path / "runs", KEY).remember(parsed(corpus))
    for other in (rowmemo.validator("probe source 2", "/usr/bin/python3"),
                  rowmemo.validator("probe source", "/opt/python3")):
        got = rowmemo.Memo(tmp_path / "runs", other).recall(summed(corpus))
        assert dataset.unchecked(got) == list(probe.DATA_FILES)


@pytest.mark.parametrize("spoil", [
    lambda p: p.write_bytes(b"\xff\xfe not json"),
    lambda p: p.write_text(p.read_text().replace('"bad": null', '"bad": {"line": "3", "reason": "x"}')),
    lambda p: p.write_text(p.read_text()[:-10]),
    lambda p: p.write_text('["a list"]'),
    lambda p: (p.unlink(), p.mkdir()),
], ids=["binary", "wrong-type", "torn", "not-a-dict", "a-folder"])
def test_a_corrupt_entry_is_a_miss(corpus, tmp_path, spoil):
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(corpus))
    sha = parsed(corpus).file("train.jsonl").sha256
    spoil(memo.folder / f"{sha}.json")
    assert dataset.unchecked(memo.recall(summed(corpus))) == ["train.jsonl"]


def test_an_entry_lying_about_the_verdict_of_other_bytes_is_a_miss(corpus, tmp_path):
    """An entry copied under another file's sha256 does not match that file's own keys."""
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(corpus))
    good = parsed(corpus).file("train.jsonl").sha256
    root = copy(corpus, tmp_path, lambda r: break_row(r, "train.jsonl"))
    bad = summed(root).file("train.jsonl").sha256
    (memo.folder / f"{bad}.json").write_bytes((memo.folder / f"{good}.json").read_bytes())
    assert dataset.unchecked(memo.recall(summed(root))) == ["train.jsonl"]


def test_memo_lives_under_the_local_runs_root(corpus, tmp_path):
    rowmemo.Memo(tmp_path / "runs", KEY).remember(parsed(corpus))
    names = sorted(p.name for p in (tmp_path / "runs" / ".row-memo").iterdir())
    assert names == sorted(f"{parsed(corpus).file(n).sha256}.json" for n in probe.DATA_FILES)
