"""Queries -> captions, spans, token maps and chunks."""

from __future__ import annotations

import pytest

from glip_ros.prompt import QueryError, build_prompt, build_prompts, split_query


def test_phrase_query_keeps_the_caption_and_locates_phrases():
    p = build_prompt("red mug, laptop. blue chair")
    assert p.caption == "red mug, laptop. blue chair"
    assert p.phrases == ["red mug", "laptop", "blue chair"]
    assert [p.caption[b:e] for [(b, e)] in p.spans] == p.phrases
    assert p.token_lists == [[1, 2], [4], [6, 7]]
    assert not p.sentence


def test_phrase_list_uses_the_official_demo_caption():
    p = build_prompt(["person", "red car"])
    assert p.caption == "person . red car . "
    assert p.spans == [[(0, 6)], [(9, 16)]]


def test_entities_in_a_sentence_at_every_occurrence_and_char_spans():
    cap = "a dog and a cat and another dog"
    p = build_prompt(cap, phrases=["dog", (12, 15)])
    assert p.spans[0] == [(2, 5), (28, 31)]
    assert p.phrases == ["dog", "cat"]
    with pytest.raises(QueryError, match="does not occur"):
        build_prompt(cap, phrases=["zebra"])
    with pytest.raises(QueryError, match="outside"):
        build_prompt(cap, phrases=[(5, 500)])
    for empty in ("", "   "):  # an empty pattern matches everywhere: this used to loop forever
        with pytest.raises(QueryError, match="no letter or digit"):
            build_prompt(cap, phrases=[empty])


def test_sentence_mode_takes_content_words():
    p = build_prompt("the red mug next to the laptop")
    assert p.sentence and p.phrases == ["red", "mug", "laptop"]
    assert not build_prompt("small yellow star").sentence  # three words: one phrase


def test_long_queries_are_chunked_on_phrase_boundaries():
    names = [f"object number {i}" for i in range(200)]
    prompts = build_prompts(names)
    assert len(prompts) > 1
    assert [n for p in prompts for n in p.phrases] == names
    assert all(p.num_tokens <= 256 for p in prompts)
    offsets = [p.phrase_offset for p in prompts]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for p in prompts:
        assert all(toks for toks in p.token_lists)


def test_split_and_errors():
    assert split_query("a. b,, c ; d") == ["a", "b", "c", "d"]
    for q in ("", "   ", ". , ;"):
        with pytest.raises(QueryError):
            build_prompt(q)
    with pytest.raises(QueryError):
        build_prompt(123)  # type: ignore[arg-type]


def test_sentence_phrases_come_from_the_grounded_tokens(reduced_model, fixture_image):
    from glip_ros.detector import GLIPDetector

    caption = "the red circle next to the blue square"
    dets = GLIPDetector(reduced_model).predict(fixture_image, caption, score_threshold=0.0, min_size=None)
    assert dets
    words = ["red", "circle", "blue", "square"]
    for d in dets:
        assert d.phrase in caption  # a contiguous piece of the sentence
        assert words[d.phrase_index] in d.phrase.split()  # containing the word the box was scored on
        assert d.phrase.split()[0] not in ("the", "next", "to")


def test_phrases_in_a_sentence_are_found_at_every_occurrence_whatever_the_case():
    # the tokenizer is uncased and the official run_ner searches the lowercased caption
    assert build_prompt("Dog and dog", phrases=["dog"]).spans == [[(0, 3), (8, 11)]]
    assert build_prompt("dog and Dog", phrases=["DOG"]).spans == [[(0, 3), (8, 11)]]


@pytest.mark.parametrize(
    "phrases,match",
    [
        ("cup", "not one string"),
        ([(2.0, 5.0)], "integer"),
        ([None], "integer"),
        ([("red", "cup")], "integer"),
        ([(2, 5, 7)], "integer"),
        ([(1, 2)], "covers no token"),  # the space between "a" and "red"
    ],
)
def test_malformed_phrases_are_refused_with_the_reason(phrases, match):
    with pytest.raises(QueryError, match=match):
        build_prompts("a red cup", phrases=phrases)


def test_phrase_grounding_in_a_sentence_longer_than_a_prompt_is_refused():
    # chunking would replace the sentence by a bare phrase list: no longer grounding in the sentence
    with pytest.raises(QueryError, match="the sentence needs"):
        build_prompts(" ".join(["word"] * 300), phrases=["word"])


def test_a_phrase_list_item_that_cannot_be_a_phrase_is_refused_not_dropped():
    # dropping it would shift every later phrase_index against the caller's list
    for bad, match in ((["", "cup"], "phrase 0 .* no letter"), (["cup", 5], "phrase 1 .* int")):
        with pytest.raises(QueryError, match=match):
            build_prompts(bad)


def test_a_decimal_point_does_not_split_a_phrase():
    assert split_query("3.5 inch floppy. cup, 0.5 l bottle.") == ["3.5 inch floppy", "cup", "0.5 l bottle"]
    assert split_query("mug.2 cups") == ["mug", "2 cups"]


@pytest.mark.parametrize(
    "query",
    ["mug. \u200b\u200b\u200blaptop", "\x07\x07\x07mug. laptop", "mug. \ufefflaptop", "mug. lap\u00adtop"],
)
def test_invisible_characters_do_not_hide_a_phrase(query):
    """Zero-width spaces, BEL, BOM, soft hyphens: BERT deletes them; a phrase next to them used to keep a span
    off its own tokens and could never be detected (accepted, no error)."""
    (p,) = build_prompts(query)
    assert p.phrases == ["mug", "laptop"] and all(p.token_lists), p.token_lists
    (q,) = build_prompts(["\u200bmug", "laptop"])
    assert q.phrases == ["mug", "laptop"] and all(q.token_lists)
