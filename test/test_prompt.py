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
