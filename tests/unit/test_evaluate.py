"""fab evaluate's pure parts: CER on constructed predictions, the bootstrap, the verdict, the
split reader's bad rows, the profile's promotion block and the report section."""
import copy
import json

import pytest

from thunderlane import profiles
from thunderlane.evaluate import metrics, policy, rows, section

TONE = "\u07eb"  # N'Ko combining short high tone
REFS = ["ߓߊ" + TONE + " ߞߊ", "ߣߌ ߡߐ", "ߝߍ ߕߊ" + TONE, "ߛߏ ߘߋ"]
HYPS = ["ߓߊ ߞߊ", "ߣߌ ߡߐ", "ߝߍ ߘߊ" + TONE, "ߛߏߘߋ"]  # a tone dropped, right, a letter, a space lost


def scored(corrections, hyps=HYPS, refs=REFS):
    return [metrics.score(f"test.jsonl:{i + 1}", h, c, r) for i, (h, c, r) in enumerate(zip(hyps, corrections, refs))]


def test_a_dropped_tone_mark_is_one_edit_and_nfc_comes_first():
    assert metrics.edits("ߓߊ", "ߓߊ" + TONE) == 1
    assert metrics.edits("e\u0301", "\u00e9") == 0  # decomposed and composed é: the same text after NFC
    assert metrics.score("f:1", "ߓߊ", "ߓߊ" + TONE, "ߓߊ" + TONE).ref_chars == 3  # the mark is a character


def test_identity_correction_gives_ratio_one_and_is_held():
    s = metrics.summarise(scored(HYPS))
    assert s.cer_ratio == 1.0 and s.reduction == 0.0 and s.worse == 0 and s.same == 4
    assert s.interval == (0.0, 0.0)
    v = policy.verdict(s, policy.Promotion())
    assert v.decision == "hold" and any("not significant" in r for r in v.reasons)


def test_perfect_correction_gives_zero_and_is_promoted():
    s = metrics.summarise(scored(REFS))
    assert s.cer_after == 0 and s.cer_ratio == 0 and s.exact_match_rate == 1.0 and s.better == 3
    assert policy.verdict(s, policy.Promotion()).decision == "promote"


def test_known_edits_give_the_exact_corpus_cer():
    """Corpus CER is total edits over total reference characters, not a mean of row CERs."""
    s = metrics.summarise(scored(HYPS))
    chars = sum(len(r) for r in REFS)  # 4 + 5 + 5 + 5 = 19
    assert (s.edits_before, s.ref_chars) == (3, chars)
    assert s.cer_before == pytest.approx(3 / chars)
    corrections = [REFS[0], "ߣߌ ߡߐߐ", REFS[2], HYPS[3]]  # fixed, one edit added, fixed, kept
    s = metrics.summarise(scored(corrections))
    assert (s.edits_after, s.better, s.worse, s.same) == (2, 2, 1, 1)
    assert s.cer_after == pytest.approx(2 / chars) and s.cer_ratio == pytest.approx(2 / 3)
    rows_cer = sum(r.cer_after for r in scored(corrections)) / 4
    assert s.cer_after != pytest.approx(rows_cer)


def test_bootstrap_is_seeded_and_brackets_the_point_reduction():
    corrections = [REFS[0], HYPS[1], REFS[2], HYPS[3]]
    many = scored(corrections * 10, HYPS * 10, REFS * 10)
    a, b = metrics.summarise(many, seed=3), metrics.summarise(many, seed=3)
    assert a.interval == b.interval
    low, high = a.interval
    assert low <= a.reduction <= high and low > 0
    assert metrics.summarise(many, seed=4).interval != a.interval


def test_worse_corpus_is_rejected_and_too_many_worse_rows_held():
    worse = metrics.summarise(scored(["x", "y", "z", "w"]))
    assert worse.cer_ratio > 1 and policy.verdict(worse, policy.Promotion()).decision == "reject"
    slightly = metrics.summarise(scored([HYPS[0], "ߣߌ ߡߐߐ", HYPS[2], HYPS[3]]))  # 3 edits -> 4
    assert slightly.cer_ratio == pytest.approx(4 / 3)
    assert policy.verdict(slightly, policy.Promotion()).decision == "reject"
    mixed = [REFS[0], "ߣߌ ߡߐߐ", REFS[2], REFS[3]]  # 3 fixed, 1 of 4 made worse: 25% > 5%
    s = metrics.summarise(scored(mixed * 10, HYPS * 10, REFS * 10))
    v = policy.verdict(s, policy.Promotion())
    assert s.cer_ratio < 0.9 and v.decision == "hold" and any("max_worse_fraction" in r for r in v.reasons)
    assert policy.verdict(s, policy.Promotion(max_worse_fraction=0.3)).decision == "promote"


def test_extremes_order_rows_by_edits_saved_and_added():
    corrections = [REFS[0], "ߣߌ ߡߐߐߐ", REFS[2], "ߛߏߘߋߋ"]
    helped, hurt = metrics.extremes(scored(corrections), 5)
    assert [s.where for s in helped] == ["test.jsonl:1", "test.jsonl:3"]
    assert [s.where for s in hurt] == ["test.jsonl:2", "test.jsonl:4"]  # +2 edits before +1


def chat(user, assistant):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_bad_rows_are_counted_by_file_and_line(tmp_path):
    three = json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                     {"role": "assistant", "content": "a"}]})
    swapped = json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]})
    lines = [chat("Fix:\nߓߊ", "ߓߊ" + TONE), three, "{not json", "", swapped, chat("Fix:\nߣߌ", "ߣߌ"),
             json.dumps({"text": "plain"})]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    split = rows.load(path)
    assert [r.where for r in split.rows] == [f"{path}:1", f"{path}:6"]
    assert [w for w, _ in split.bad] == [f"{path}:{n}" for n in (2, 3, 4, 5, 7)]
    assert "3 turns" in split.bad[0][1] and "not JSON" in split.bad[1][1] and split.bad[2][1] == "empty line"
    assert split.instruction == "Fix:\n" and split.hypothesis(split.rows[0]) == "ߓߊ"
    assert len(rows.load(path, limit=1).rows) == 1


def test_an_empty_split_or_one_without_a_good_row_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(rows.SplitError, match="empty.jsonl: the split is empty"):
        rows.load(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(rows.SplitError, match=r"no two-turn .*bad.jsonl:1: no .messages. list"):
        rows.load(tmp_path / "bad.jsonl")
    with pytest.raises(rows.SplitError, match="does not exist"):
        rows.load(tmp_path / "absent.jsonl")


def test_instruction_is_the_shared_prefix_up_to_a_line_break():
    assert rows.instruction(["Correct:\nߓߊ", "Correct:\nߓߌ"]) == "Correct:\n"
    assert rows.instruction(["ߓߊ ߞߊ", "ߓߊ ߣߌ"]) == ""  # no line break shared: the turn is the hypothesis
    assert rows.instruction(["A\nB\nx", "A\nB\ny"]) == "A\nB\n"


PROFILE = {"batch_size": 4, "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 20.0},
           "max_seq_length": 128, "save_every": 5, "seed": 0, "learning_rate": 1e-4,
           "lane": {"hosts": ["mac4", "mac5"], "run_name": "r"}}


def test_profile_promotion_defaults_and_overrides():
    p = profiles.parse("p", copy.deepcopy(PROFILE), "p.yaml")
    assert p.promotion == policy.Promotion(0.9, 0.05, False, "test", 0)
    assert "promotion" not in p.config  # not an mlx-lm field: never reaches the training entry
    data = dict(copy.deepcopy(PROFILE), promotion={"max_cer_ratio": 0.8, "on_handoff": True, "limit": 20})
    got = profiles.parse("p", data, "p.yaml").promotion
    assert (got.max_cer_ratio, got.max_worse_fraction, got.on_handoff, got.limit) == (0.8, 0.05, True, 20)


@pytest.mark.parametrize("block, why", [({"max_cer_ratio": 1.5}, "promotion.max_cer_ratio"),
                                        ({"max_worse_fraction": "a"}, "promotion.max_worse_fraction"),
                                        ({"on_handoff": "yes"}, "promotion.on_handoff"),
                                        ({"split": "train"}, "promotion.split"),
                                        ({"limit": -1}, "promotion.limit"),
                                        ({"max_cer": 0.9}, "promotion: unknown field 'max_cer'"),
                                        ([0.9], "promotion: a mapping")])
def test_bad_promotion_block_names_file_and_field(block, why):
    with pytest.raises(profiles.ProfileError, match=f"p.yaml: {why}"):
        profiles.parse("p", dict(copy.deepcopy(PROFILE), promotion=block), "p.yaml")


def test_section_shows_verdict_figures_and_rows_both_ways():
    scores = scored([REFS[0], "ߣߌ ߡߐߐ", REFS[2], HYPS[3]])
    s = metrics.summarise(scores)
    helped, hurt = metrics.extremes(scores)
    data = {"metrics": s.to_dict(), "verdict": policy.verdict(s, policy.Promotion()).to_dict(), "step": 10,
            "split": "test.jsonl", "bad_rows": [{"where": "test.jsonl:9", "reason": "empty line"}], "bad_count": 1,
            "test_loss": 1.25, "decode": {"rows_per_s": 3.0}, "peak_rss_mb": 100.0, "saved": "/m/eval_step10_test.json",
            "helped": [h.to_dict() for h in helped], "hurt": [h.to_dict() for h in hurt],
            "command": "fab evaluate --profile p --step 10 --split test"}
    md = "\n".join(section.markdown(data))
    assert "## Promotion decision" in md and "Verdict: **hold**" in md
    assert f"ߓߊ ߞߊ → {REFS[0]} → {REFS[0]}" in md  # hypothesis -> correction -> reference
    assert "`test.jsonl:2` (0 -> 1 edits)" in md and "`test.jsonl:9` (empty line)" in md
    assert "    fab evaluate --profile p --step 10 --split test" in md
    assert "CER ratio 0.667" in section.text(data) and "bad row test.jsonl:9: empty line" in section.text(data)
    assert "Not evaluated: boom" in "\n".join(section.markdown({"error": "boom", "command": "c"}))


def test_the_handoff_gets_the_reason_when_the_evaluation_cannot_run(tmp_path, monkeypatch):
    """No mirror: refused with the fix; anything else raised (mlx, a disk) still leaves the handoff a
    section to write instead of ending it before its report is saved."""
    from tests.unit.test_inventory import GOOD
    from thunderlane import inventory
    from thunderlane.evaluate import run
    data = copy.deepcopy(GOOD)
    data["local"]["runs_root"] = str(tmp_path)
    inv = inventory.parse(data, "inv.yaml")
    prof = profiles.parse("p", copy.deepcopy(PROFILE), "p.yaml")
    got = run.for_handoff(inv, prof)
    assert "no committed step in the local mirror" in got["error"] and "fab mirror-back --profile p" in got["error"]
    assert got["command"].endswith("fab evaluate --profile p --split test")

    def crash(*a, **k):
        raise RuntimeError("[metal] out of memory")
    monkeypatch.setattr(run, "evaluate", crash)
    assert run.for_handoff(inv, prof)["error"] == "RuntimeError: [metal] out of memory"


def test_a_limited_run_is_saved_apart_from_the_whole_split():
    from thunderlane.evaluate.run import eval_file
    assert eval_file(10, "test", 0) == "eval_step10_test.json"
    assert eval_file(10, "test", 5) == "eval_step10_test_first5.json"
