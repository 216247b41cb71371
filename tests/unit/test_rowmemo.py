"""The memo of local's row verdicts: a hit gives what a parse gives, anything else re-parses."""
import os
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


# --- pruning: the current files' entries and the most recently used others stay -------------------

def fake_entries(memo, count, start=1_000_000):
    """``count`` entries of other bytes, the i-th used at ``start + i`` (older first)."""
    memo.folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        path = memo.folder / f"{i:064x}.json"
        path.write_text("{}\n")
        os.utime(path, (start + i, start + i))
        names.append(path.name)
    return names


def entry_names(memo):
    return {p.name for p in memo.folder.iterdir() if rowmemo.ENTRY.fullmatch(p.name)}


def test_stale_keeps_the_current_and_the_most_recent_others():
    entries = {f"{i:064x}.json": float(i) for i in range(6)}
    current = {f"{0:064x}", f"{5:064x}"}   # the oldest and the newest are the current files'
    assert rowmemo.stale(entries, current, keep=2) == [f"{2:064x}.json", f"{1:064x}.json"]
    assert rowmemo.stale(entries, current, keep=4) == []
    assert rowmemo.stale(entries, set(), keep=0) == sorted(entries, reverse=True)


def test_remember_prunes_old_entries_of_other_bytes(corpus, tmp_path):
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    others = fake_entries(memo, rowmemo.KEEP_RECENT + 5)
    (memo.folder / "notes.txt").write_text("not an entry\n")
    (memo.folder / f"{'f' * 64}.json.tmpabc").mkdir()   # someone's atomic write in flight
    (memo.folder / f"{'e' * 64}.json").mkdir()          # named as an entry, but a folder
    memo.remember(parsed(corpus))
    current = {f"{parsed(corpus).file(n).sha256}.json" for n in probe.DATA_FILES}
    assert entry_names(memo) == current | set(others[5:]) | {f"{'e' * 64}.json"}
    assert (memo.folder / "notes.txt").is_file() and (memo.folder / f"{'f' * 64}.json.tmpabc").is_dir()
    assert dataset.unchecked(memo.recall(summed(corpus))) == []


def test_the_current_files_entries_stay_however_old(corpus, tmp_path):
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(corpus))
    for p in memo.folder.iterdir():
        os.utime(p, (1, 1))                         # older than every other entry
    fake_entries(memo, rowmemo.KEEP_RECENT + 3)
    memo.remember(parsed(corpus))
    assert dataset.unchecked(memo.recall(summed(corpus))) == []
    assert len(entry_names(memo)) == len(probe.DATA_FILES) + rowmemo.KEEP_RECENT


def test_a_hit_counts_as_a_use(corpus, tmp_path):
    """A corpus verified now and then (a hit each time) keeps its entries while another one's edits
    come and go."""
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    memo.remember(parsed(corpus))
    for p in memo.folder.iterdir():
        os.utime(p, (1, 1))
    memo.recall(summed(corpus))                     # the hit: its entries are the newest now
    fake_entries(memo, rowmemo.KEEP_RECENT)
    memo.prune(current=set())
    assert dataset.unchecked(memo.recall(summed(corpus))) == []


def test_a_failed_prune_costs_nothing_but_room(corpus, tmp_path, monkeypatch):
    memo = rowmemo.Memo(tmp_path / "runs", KEY)
    others = fake_entries(memo, rowmemo.KEEP_RECENT + 2)

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(rowmemo.os, "unlink", refuse)
    memo.remember(parsed(corpus))                   # no exception
    assert entry_names(memo) >= set(others)
    assert dataset.unchecked(memo.recall(summed(corpus))) == []
    monkeypatch.undo()
    assert memo.prune({f.sha256 for f in parsed(corpus).files.values()}) == others[1::-1]
