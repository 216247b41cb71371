"""The N'Ko ASR-correction fixture corpus: deterministic, well-formed, and loadable by mlx-lm."""

import hashlib
import json
import random
import types

import pytest

from thunderlane.lab.fixtures import corpus
from thunderlane.lab.fixtures.corpus import (
    ERROR_KINDS,
    FILES,
    INSTRUCTION,
    MANIFEST,
    build_corpus,
    corpus_texts,
    file_facts,
)

NKO = {chr(code) for code in range(0x07C0, 0x0800)}
ALLOWED = NKO | {" ", "."}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A default 600-row corpus: (root, returned manifest)."""
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def _rows(root, name):
    """The parsed rows of one corpus file."""
    with open(root / name, encoding="utf-8") as source:
        return [json.loads(line) for line in source]


def _pairs(root):
    """(hypothesis, correction) of every row of every file."""
    pairs = []
    for name in FILES:
        for row in _rows(root, name):
            user, assistant = row["messages"]
            pairs.append((user["content"][len(INSTRUCTION) :], assistant["content"]))
    return pairs


def _observed_kinds(hypothesis, correction):
    """Error kinds that a (hypothesis, correction) pair shows on its face."""
    heard, said = hypothesis.split(), correction.split()
    letters_heard, letters_said = "".join(heard), "".join(said)
    kinds = set()
    if sum(c in corpus.MARKS for c in hypothesis) < sum(c in corpus.MARKS for c in correction):
        kinds.add(corpus.DROPPED_TONE)
    if len(letters_heard) == len(letters_said) and any(
        a != b and b in corpus.CONFUSIONS.get(a, ()) for a, b in zip(letters_heard, letters_said)
    ):
        kinds.add(corpus.SUBSTITUTION)
    if letters_heard == letters_said and len(heard) > len(said):
        kinds.add(corpus.SPLIT_WORD)
    if letters_heard == letters_said and len(heard) < len(said):
        kinds.add(corpus.MERGED_WORDS)
    if any(heard == said[:i] + said[i + 1 :] for i in range(len(said))):
        kinds.add(corpus.DROPPED_WORD)
    return kinds


def test_same_arguments_give_byte_identical_files(tmp_path):
    build_corpus(tmp_path / "a", rows=200, seed=3)
    build_corpus(tmp_path / "b", rows=200, seed=3)
    for name in FILES + (MANIFEST,):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_another_seed_gives_other_rows(tmp_path):
    first = build_corpus(tmp_path / "a", rows=200, seed=3)
    second = build_corpus(tmp_path / "b", rows=200, seed=4)
    for name in FILES:
        assert first["files"][name]["sha256"] != second["files"][name]["sha256"]


def test_only_final_files_are_left(built):
    root, _ = built
    assert sorted(path.name for path in root.iterdir()) == sorted(FILES + (MANIFEST,))
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in root.iterdir())


def test_every_row_is_a_user_assistant_pair_in_nko(built):
    root, _ = built
    for name in FILES:
        raw = (root / name).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        assert b"\\u07" not in raw  # N'Ko is written as UTF-8, not as JSON escapes
        for row in _rows(root, name):
            assert list(row) == ["messages"]
            user, assistant = row["messages"]
            assert [user["role"], assistant["role"]] == ["user", "assistant"]
            assert set(user) == set(assistant) == {"role", "content"}
            assert user["content"].startswith(INSTRUCTION)
            hypothesis = user["content"][len(INSTRUCTION) :]
            for text in (hypothesis, assistant["content"]):
                assert text and set(text) <= ALLOWED, text
            assert 3 <= len(assistant["content"].split()) <= 12


def test_marks_follow_vowels(built):
    root, _ = built
    for hypothesis, correction in _pairs(root):
        for word in (hypothesis + " " + correction).split():
            for offset, letter in enumerate(word):
                if letter in corpus.MARKS:
                    assert offset > 0 and word[offset - 1] in corpus.VOWELS, word


def test_manifest_matches_the_files(built):
    root, manifest = built
    assert json.loads((root / MANIFEST).read_text(encoding="utf-8")) == manifest
    assert (root / MANIFEST).read_text(encoding="utf-8").endswith("}\n")
    assert manifest["name"] == "nko_asr_correction_fixture"
    assert manifest["format"] == "chat"
    assert manifest["files"] == {name: file_facts(root / name) for name in FILES}
    assert manifest["rows"] == 600
    built_from = manifest["built_from"]
    assert built_from["generator"] == "thunderlane.lab.fixtures.corpus"
    assert (built_from["version"], built_from["seed"], built_from["rows"]) == (1, 0, 600)
    assert built_from["split"] == [0.8, 0.1, 0.1]


def test_split_sizes(built, tmp_path):
    _, manifest = built
    assert [manifest["files"][name]["lines"] for name in FILES] == [480, 60, 60]
    other = build_corpus(tmp_path, rows=50, split=(0.6, 0.2, 0.2))
    assert [other["files"][name]["lines"] for name in FILES] == [30, 10, 10]


@pytest.mark.parametrize(
    ("rows", "split", "message"),
    [(5, (1.0, 0.0, 0.0), "leaves a file empty"), (100, (0.5, 0.5, 0.5), "summing to 1")],
)
def test_bad_split_is_refused_before_writing(tmp_path, rows, split, message):
    with pytest.raises(ValueError, match=message):
        build_corpus(tmp_path / "out", rows=rows, split=split)
    assert not (tmp_path / "out").exists()


def test_every_error_kind_occurs_and_is_counted(built):
    root, manifest = built
    counts = manifest["built_from"]["error_kinds"]
    assert set(counts) == set(ERROR_KINDS) | {"none"}
    assert all(counts[kind] > 0 for kind in ERROR_KINDS), counts
    pairs = _pairs(root)
    unchanged = sum(hypothesis == correction for hypothesis, correction in pairs)
    assert unchanged == counts["none"]
    assert 0.01 * len(pairs) <= unchanged <= 0.1 * len(pairs)
    errors = len(pairs) - unchanged
    assert errors <= sum(counts[kind] for kind in ERROR_KINDS) <= 3 * errors


def test_every_error_kind_shows_in_the_rows(built):
    root, _ = built
    seen = set()
    for hypothesis, correction in _pairs(root):
        seen |= _observed_kinds(hypothesis, correction)
    assert seen == set(ERROR_KINDS)


def test_planned_errors_hit_distinct_words_and_always_show():
    rng = random.Random(0)
    for _ in range(2000):
        words = rng.choices(corpus.LEXICON, k=rng.randint(3, 12))
        plan = corpus._plan_errors(words, rng)
        assert 1 <= sum(kind is not None for kind in plan.values()) <= 3
        for index, kind in plan.items():
            if kind == corpus.MERGED_WORDS:
                assert plan[index + 1] is None  # the merged-in word carries no error of its own
        assert corpus._apply(words, plan, rng) != words


def test_corpus_texts_are_corrections_then_hypotheses(built):
    root, _ = built
    texts = corpus_texts(root)
    expected = [text for hypothesis, correction in _pairs(root) for text in (correction, hypothesis)]
    assert texts == expected
    assert len(texts) == 1200
    assert not any(INSTRUCTION.strip() in text for text in texts)


def test_corpus_texts_refuses_a_foreign_user_turn(tmp_path):
    build_corpus(tmp_path, rows=10)
    row = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="instruction"):
        corpus_texts(tmp_path)


def test_file_facts(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"one\ntwo\n")
    assert file_facts(path) == {
        "lines": 2,
        "bytes": 8,
        "sha256": hashlib.sha256(b"one\ntwo\n").hexdigest(),
    }


def test_cli_prints_the_manifest(tmp_path, capsys):
    assert corpus.main(["--root", str(tmp_path), "--rows", "40", "--seed", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8"))
    assert (printed["rows"], printed["built_from"]["seed"]) == (40, 5)


def test_cli_reports_a_bad_row_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["--root", str(tmp_path / "out"), "--rows", "2"])
    assert exit_info.value.code == 2
    assert "leaves a file empty" in capsys.readouterr().err


class StandInTokenizer:
    """Renders Gemma-style turns and returns their code points: all that ChatDataset calls."""

    def apply_chat_template(
        self, messages, tools=None, add_generation_prompt=False, return_dict=False
    ):
        """Token ids (code points) of the rendered conversation."""
        assert tools is None and return_dict is False
        roles = {"user": "user", "assistant": "model"}
        text = "".join(
            f"<start_of_turn>{roles[m['role']]}\n{m['content']}<end_of_turn>\n" for m in messages
        )
        if add_generation_prompt:
            text += "<start_of_turn>model\n"
        return [ord(letter) for letter in text]


def test_mlx_lm_loads_the_files_as_chat_data(built):
    datasets = pytest.importorskip("mlx_lm.tuner.datasets")
    root, _ = built
    args = types.SimpleNamespace(data=str(root), train=True, test=True, mask_prompt=True)
    splits = datasets.load_dataset(args, StandInTokenizer())
    assert [type(split) for split in splits] == [datasets.ChatDataset] * 3
    assert [len(split) for split in splits] == [480, 60, 60]
    train = splits[0]
    tokens, offset = train.process(train[0])
    answer = "".join(map(chr, tokens[offset:]))
    correction = train[0]["messages"][1]["content"]
    assert 0 < offset < len(tokens)
    assert answer == correction + "<end_of_turn>\n"


def test_mlx_lm_batches_the_training_set(built):
    datasets = pytest.importorskip("mlx_lm.tuner.datasets")
    trainer = pytest.importorskip("mlx_lm.tuner.trainer")
    root, _ = built
    args = types.SimpleNamespace(data=str(root), train=True, test=False, mask_prompt=True)
    train, _, _ = datasets.load_dataset(args, StandInTokenizer())
    batch, lengths = next(
        trainer.iterate_batches(datasets.CacheDataset(train), batch_size=8, max_seq_length=4096)
    )
    assert batch.shape[0] == 8 and lengths.shape == (8, 2)
    offsets, ends = lengths[:, 0].tolist(), lengths[:, 1].tolist()
    assert all(0 < start < end <= batch.shape[1] for start, end in zip(offsets, ends))
