"""Queries -> GLIP prompts: caption, phrases, character spans, token positive map, chunks of ≤ 256 tokens.

Three ways a user asks:
* a query string of phrases separated by periods/commas/semicolons (``"red mug. laptop, blue chair"``):
  the caption is the string itself and each phrase is located in it (official ``custom_entity`` spans);
* a list of phrases: the official demo's caption ``"p1 . p2 . "`` with one span per phrase;
* a sentence with explicit ``phrases`` (phrase grounding, as the demo's entities): every occurrence of each
  phrase in the caption is a span of that phrase; (start, end) character spans are accepted too.
Prompts longer than 256 tokens are split into chunks of whole phrases. The official LVIS evaluation also
chunks, but at a fixed 40 names per chunk, captions joined by ". " (no trailing period), its top detections
kept per chunk (``DETECTIONS_PER_IMG``, 300 in its LVIS config);
here each chunk is filled to the token budget (fewer forwards) and one NMS + top 100 runs over all chunks,
so scores of queries over 256 tokens are not the official LVIS protocol's (docs/MODELS.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["QueryError", "Prompt", "split_query", "build_prompt", "build_prompts", "get_tokenizer"]

MAX_QUERY_LEN = 256
TOKEN_PAD = 1 << 30  # "no token" in Prompt.phrase_index: larger than any prompt length
# A period between two digits is a decimal point ("3.5 inch floppy"), not a separator.
_SEPARATORS = re.compile(r"[,;\n]|(?<!\d)\.|\.(?!\d)")
PhraseSpec = str | tuple[int, int] | Sequence[tuple[int, int]]


class QueryError(ValueError):
    """A query that cannot be turned into a prompt; the message says why (for logs and service answers)."""


def get_tokenizer():
    from .model.language import get_tokenizer as _get

    return _get()


@dataclass
class Prompt:
    caption: str
    phrases: list[str]
    spans: list[list[tuple[int, int]]]
    input_ids: torch.Tensor  # [1, max_len]
    attention_mask: torch.Tensor  # [1, max_len]
    positive_map: torch.Tensor  # [P, max_len] binary (1 on each phrase's tokens)
    token_lists: list[list[int]] = field(
        default_factory=list
    )  # official positive_map_label_to_token, 0-based
    phrase_offset: int = 0  # index of this chunk's first phrase in the whole query
    # Free-form sentence: the "phrases" are its content words; each box's phrase is read off the tokens it
    # grounds to (see postprocess.sentence_phrase). token_spans: character span of every token ((0, 0) if
    # none).
    sentence: bool = False
    token_spans: list[tuple[int, int]] = field(default_factory=list)
    _index: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def phrase_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[P, kmax] token indices per phrase (``TOKEN_PAD`` where a phrase has fewer) and [P] token counts,
        built once per prompt (it lives in the text cache with the prompt) for the per-frame score gather."""
        if self._index is None:
            kmax = max(1, max((len(t) for t in self.token_lists), default=1))
            idx = torch.full((len(self.token_lists), kmax), TOKEN_PAD, dtype=torch.long)
            for j, toks in enumerate(self.token_lists):
                if toks:
                    idx[j, : len(toks)] = torch.as_tensor(toks)
            counts = torch.tensor([len(t) for t in self.token_lists], dtype=torch.float32)
            self._index = (idx, counts)
        return self._index

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def split_query(query: str) -> list[str]:
    """Phrases of a query string, separated by periods (not decimal points), commas, semicolons, newlines."""
    if not isinstance(query, str):
        raise QueryError(f"query must be a string, got {type(query).__name__}")
    return [" ".join(p.split()) for p in _SEPARATORS.split(query) if p.strip() and _has_word(p)]


def _has_word(s: str) -> bool:
    return any(ch.isalnum() for ch in s)


def _phrase_pattern(phrase: str) -> str:
    """``phrase`` as a regex that tolerates different whitespace between its words.

    Callers pass phrases with a word (``_has_word``): an empty pattern matches everywhere with length 0, and
    a search that advances past each match would never end."""
    pattern = r"\s+".join(re.escape(w) for w in phrase.split())
    assert pattern, f"phrase without words: {phrase!r}"
    return pattern


def _locate(caption: str, phrase: str, start: int) -> tuple[int, int] | None:
    """Find ``phrase`` in ``caption`` from ``start`` (exact case first, then any case)."""
    pattern = _phrase_pattern(phrase)
    m = re.compile(pattern).search(caption, start) or re.compile(pattern, re.IGNORECASE).search(
        caption, start
    )
    return (m.start(), m.end()) if m else None


def _locate_all(caption: str, phrase: str) -> list[tuple[int, int]]:
    """Every occurrence of ``phrase``, whatever its case (as the official ``run_ner`` on the lowercased
    caption; the uncased tokenizer ignores case anyway)."""
    return [(m.start(), m.end()) for m in re.finditer(_phrase_pattern(phrase), caption, re.IGNORECASE)]


def _span_list(p, query: str) -> list[tuple[int, int]]:
    """A (start, end) span or a sequence of them -> list of int pairs inside ``query``; else QueryError."""

    def is_pair(x) -> bool:
        return (
            isinstance(x, (tuple, list))
            and len(x) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
        )

    if is_pair(p):
        sp = [tuple(p)]
    elif isinstance(p, (tuple, list)) and p and all(is_pair(x) for x in p):
        sp = [tuple(x) for x in p]
    else:
        raise QueryError(
            f"each phrase must be a string or an integer (start, end) span (or a list of them), got {p!r}"
        )
    for b, e in sp:
        if not (0 <= b < e <= len(query)):
            raise QueryError(f"span ({b}, {e}) is outside the caption (length {len(query)})")
    return sp


def _token_positions(encoding, spans: list[tuple[int, int]], max_len: int) -> list[int]:
    """Official ``create_positive_map`` char->token mapping, with its +1/+2 and -2/-3 fallbacks."""
    toks: list[int] = []

    def c2t(i: int) -> int | None:
        try:
            return encoding.char_to_token(i)
        except Exception:  # noqa: BLE001 - the official code treats any failure as "no token"
            return None

    for beg, end in spans:
        b = c2t(beg)
        e = c2t(end - 1)
        if b is None:
            b = c2t(beg + 1)
            if b is None:
                b = c2t(beg + 2)
        if e is None:
            e = c2t(end - 2)
            if e is None:
                e = c2t(end - 3)
        if b is None or e is None:
            continue
        toks.extend(range(b, min(e, max_len - 1) + 1))
    return sorted(set(t for t in toks if t < max_len))


def _encode(
    caption: str,
    phrases: list[str],
    spans: list[list[tuple[int, int]]],
    tokenizer,
    max_len: int,
    phrase_offset: int = 0,
) -> Prompt:
    full = tokenizer(caption, add_special_tokens=True)
    if len(full["input_ids"]) > max_len:
        raise QueryError(f"prompt has {len(full['input_ids'])} tokens, more than {max_len}")
    enc = tokenizer([caption], max_length=max_len, padding="max_length", truncation=True, return_tensors="pt")
    token_lists = [_token_positions(enc, s, max_len) for s in spans]
    pm = torch.zeros((len(phrases), max_len), dtype=torch.float32)
    for j, toks in enumerate(token_lists):
        if toks:
            pm[j, toks] = 1.0
    offsets = tokenizer(
        [caption], max_length=max_len, padding="max_length", truncation=True, return_offsets_mapping=True
    )["offset_mapping"][0]
    return Prompt(
        caption,
        list(phrases),
        [list(s) for s in spans],
        enc["input_ids"],
        enc["attention_mask"],
        pm,
        token_lists,
        phrase_offset,
        token_spans=[tuple(o) for o in offsets],
    )


def _num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompts(
    query: str | Sequence[str],
    tokenizer=None,
    phrases: Sequence[PhraseSpec] | None = None,
    max_len: int = MAX_QUERY_LEN,
) -> list[Prompt]:
    """A query -> one prompt, or several chunks when it does not fit in ``max_len`` tokens.

    Raises :class:`QueryError` for an empty query, one with no words, a phrase not found in the caption, or a
    single phrase too long for a prompt of its own.
    """
    tokenizer = tokenizer or get_tokenizer()
    if isinstance(query, (list, tuple)):
        if not query:
            raise QueryError("the phrase list is empty")
        for i, p in enumerate(query):  # dropping one would shift every later phrase_index
            if not isinstance(p, str):
                raise QueryError(f"phrase {i} of the list is a {type(p).__name__}, not a string: {p!r}")
            if not _has_word(p):
                raise QueryError(f"phrase {i} of the list has no letter or digit: {p!r}")
        names = [" ".join(_drop_invisible(p).split()) for p in query]
        caption, spans = "", []
        for w in names:  # official demo caption for a list: "w1 . w2 . "
            spans.append([(len(caption), len(caption) + len(w))])
            caption += w + " . "
        return _chunked(caption, names, spans, tokenizer, max_len)
    if not isinstance(query, str):
        raise QueryError(f"query must be a string or a list of strings, got {type(query).__name__}")
    if not query.strip():
        raise QueryError("the query is empty")
    if phrases is not None:
        if isinstance(phrases, str):
            raise QueryError(f"phrases must be a list of phrases, not one string: use [{phrases!r}]")
        names, spans = [], []
        for p in phrases:
            if isinstance(p, str):
                if not _has_word(p):
                    raise QueryError(f"phrase {p!r} has no letter or digit")
                found = _locate_all(query, p)
                if not found:
                    raise QueryError(f"phrase {p!r} does not occur in the caption")
                names.append(" ".join(p.split()))
                spans.append(found)
            else:
                sp = _span_list(p, query)
                names.append(query[sp[0][0] : sp[0][1]])
                spans.append(sp)
        if not names:
            raise QueryError("no phrases given")
        n_tok = len(tokenizer(query, add_special_tokens=True)["input_ids"])
        if n_tok > max_len:
            # Chunking would replace the sentence by a bare phrase list: not phrase grounding any more.
            raise QueryError(
                f"the sentence needs {n_tok} tokens; a prompt holds {max_len}: "
                "shorten it to ground phrases in it"
            )
        prompts = _chunked(query, names, spans, tokenizer, max_len)
        _check_every_phrase_has_tokens(prompts)
        return prompts
    query = _drop_invisible(query)
    names = split_query(query)
    if not names:
        raise QueryError(f"the query has no words, only punctuation or spaces: {query[:40]!r}")
    if len(names) == 1 and len(names[0].split()) >= SENTENCE_MIN_WORDS:
        return [_sentence_prompt(query, tokenizer, max_len)]
    spans, pos = [], 0
    for p in names:
        s = _locate(query, p, pos)
        assert s is not None, (query, p)
        spans.append([s])
        pos = s[1]
    prompts = _chunked(query, names, spans, tokenizer, max_len)
    _check_every_phrase_has_tokens(prompts)
    return prompts


def _drop_invisible(text: str) -> str:
    """The text without control and format characters other than whitespace (zero-width spaces, BOM, soft
    hyphen, BEL, ...). BERT's tokenizer deletes them, so they name nothing; left in a phrase they moved its
    span off its own tokens and the phrase silently could never be detected."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))


def _check_every_phrase_has_tokens(prompts: list[Prompt]) -> None:
    """A phrase that covers no token can never be detected: refuse the query rather than answer it without."""
    for prompt in prompts:
        for name, toks in zip(prompt.phrases, prompt.token_lists, strict=True):
            if not toks:
                raise QueryError(f"phrase {name!r} covers no token of the caption (only spaces or symbols?)")


SENTENCE_MIN_WORDS = 4
STOPWORDS = frozenset(
    "a an the this that these those of to in on at by for from with without and or but is are was were be "
    "been it its there here where which who what next near left right behind above below under over between "
    "beside besides front back top bottom side into onto off up down out please find show me my your our "
    "their his her some any all every one two three".split()
)


def _sentence_prompt(caption: str, tokenizer, max_len: int) -> Prompt:
    """A free-form sentence: the candidate classes are its content words (stop words dropped)."""
    words = [(m.group(0), m.start(), m.end()) for m in re.finditer(r"[^\W_]+(?:['-][^\W_]+)*", caption)]
    content = [(w, b, e) for w, b, e in words if w.lower() not in STOPWORDS] or words
    if not content:
        raise QueryError(f"the sentence has no words: {caption[:40]!r}")
    n_tok = len(tokenizer(caption, add_special_tokens=True)["input_ids"])
    if n_tok > max_len:
        raise QueryError(
            f"the sentence alone needs {n_tok} tokens; a prompt holds {max_len}: separate phrases with "
            "periods or commas so that it can be split"
        )
    p = _encode(caption, [w for w, _, _ in content], [[(b, e)] for _, b, e in content], tokenizer, max_len)
    p.sentence = True
    return p


def _chunked(
    caption: str, names: list[str], spans: list[list[tuple[int, int]]], tokenizer, max_len: int
) -> list[Prompt]:
    n_tok = len(tokenizer(caption, add_special_tokens=True)["input_ids"])
    if n_tok <= max_len:
        return [_encode(caption, names, spans, tokenizer, max_len)]
    # Too long: chunks of whole phrases, each captioned "p1. p2. … pk." (the official training/eval
    # separator).
    budget = max_len - 2  # [CLS] and [SEP]
    chunks: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, name in enumerate(names):
        cost = _num_tokens(tokenizer, name) + 1  # the phrase and its "."
        if cost > budget:
            raise QueryError(
                f"phrase {i + 1} ({name[:40]!r}…) alone needs {cost} tokens; a prompt holds {budget}"
            )
        if used + cost > budget and cur:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += cost
    if cur:
        chunks.append(cur)
    prompts = []
    for idx in chunks:
        cap, sp = "", []
        for i in idx:
            if cap:
                cap += " "
            sp.append([(len(cap), len(cap) + len(names[i]))])
            cap += names[i] + "."
        prompts.append(_encode(cap, [names[i] for i in idx], sp, tokenizer, max_len, phrase_offset=idx[0]))
    return prompts


def build_prompt(
    query: str | Sequence[str],
    tokenizer=None,
    phrases: Sequence[PhraseSpec] | None = None,
    max_len: int = MAX_QUERY_LEN,
) -> Prompt:
    """Like :func:`build_prompts` for a query that must fit in one prompt."""
    prompts = build_prompts(query, tokenizer, phrases, max_len)
    if len(prompts) != 1:
        raise QueryError(f"the query needs {len(prompts)} prompts of {max_len} tokens; use build_prompts")
    return prompts[0]
