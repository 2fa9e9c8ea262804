"""Loading official GLIP checkpoints (and our own) by name, with a strict report.

Official files are ``torch.save({'model': {'module.' + key: tensor}, 'model_ema': …, …})``; the keys are used
as they are (our module tree keeps the official names), after stripping the DDP ``module.`` prefix.
Nothing here executes code from a file: ``.pth`` files are read with ``torch.load(weights_only=True)``; one
that needs more than that must be converted once, knowingly, with ``glip-convert`` (to safetensors).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import GLIPConfig

__all__ = [
    "CheckpointError",
    "LoadReport",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
    "read_checkpoint_config",
    "convert_to_safetensors",
    "IGNORED_KEY_PATTERNS",
]

# Keys that real checkpoints may carry and that this implementation recomputes or does not use.
IGNORED_KEY_PATTERNS = (
    "language_backbone.body.model.embeddings.position_ids",  # buffer; non-persistent in transformers >= 4.31
    "language_backbone.body.model.pooler.",  # BERT pooler: GLIP builds BertModel(add_pooling_layer=False)
)

CONFIG_METADATA_KEY = "glip_ros_config"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        parts = [f"{self.loaded} tensors match"]
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (
                    f", … (+{len(items) - limit})" if len(items) > limit else ""
                )
                parts.append(f"{len(items)} {name}: {shown}")
        if self.mismatched:
            shown = ", ".join(f"{k} file{list(a)} model{list(b)}" for k, a, b in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} shape mismatches: {shown}")
        if self.ignored:
            more = ", …" if len(self.ignored) > 3 else ""
            parts.append(f"{len(self.ignored)} ignored ({', '.join(self.ignored[:3])}{more})")
        return "; ".join(parts)


def _is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without executing anything from it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - SafetensorsError's import path differs between versions
            raise CheckpointError(f"cannot read {path} as safetensors (truncated or corrupt?): {e}") from e
    import pickle
    import zipfile

    _check_torch_save_format(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs more than plain tensors to unpickle, and loading it would run code from the file. "
            "If you trust it, convert it once with:  "
            f"glip-convert {path} {os.path.splitext(path)[0]}.safetensors"
            f"  and load the .safetensors file. ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path} (truncated or not a PyTorch checkpoint?): {type(e).__name__}: {e}"
        ) from e
    except Exception as e:  # noqa: BLE001 - garbage bytes surface as KeyError/IndexError/... from the unpickler
        raise CheckpointError(
            f"cannot read {path}: not a PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from e
    return _extract_model_state(obj, path)


# torch.save's legacy (pre-1.6, non-zip) files start with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_SAVE_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _check_torch_save_format(path: str) -> None:
    """Refuse a file that torch.save did not write (a zip archive, or the legacy format's magic number).

    Why: torch.load's weights-only refusal reads the same for random bytes as for a real checkpoint that
    pickles objects, and only the second one should be sent to glip-convert."""
    import zipfile

    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_SAVE_HEAD))
    if head != _LEGACY_TORCH_SAVE_HEAD:
        raise CheckpointError(
            f"cannot read {path}: not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy "
            "format; truncated or another kind of file?)"
        )


def _extract_model_state(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # official: use 'model', not 'model_ema' (microsoft/GLIP#59)
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: expected a state_dict or {{'model': state_dict}}, got {type(obj).__name__}"
        )
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
    if not out:
        keys = sorted(str(k) for k in obj)
        if "model_ema" in keys:
            raise CheckpointError(
                f"{origin}: has 'model_ema' but no 'model' entry; GLIP inference uses 'model' "
                "(microsoft/GLIP#59). To use the EMA weights, save ckpt['model_ema'] as the state_dict."
            )
        raise CheckpointError(f"{origin}: no tensors found (top-level keys: {keys[:10]})")
    return out


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_checkpoint(
    model: nn.Module, checkpoint: str | Mapping[str, torch.Tensor], strict: bool = True
) -> LoadReport:
    """Load official or glip_ros weights into ``model`` by name.

    ``checkpoint``: a path (.pth/.pt/.bin via ``weights_only`` torch.load, or .safetensors) or a state_dict
    (official ``{'model': …}`` wrapping and ``module.`` prefixes accepted). Float tensors are cast to the
    parameter dtype (e.g. the fp16 fixture weights). With ``strict`` any missing, unexpected or mismatched
    entry raises :class:`CheckpointError` with a readable summary; otherwise the report lists them.
    """
    if isinstance(checkpoint, str):
        sd = read_state_dict(checkpoint)
        origin = checkpoint
    else:
        sd = _extract_model_state(checkpoint, "state_dict")
        origin = "state_dict"
    sd = _strip_prefix(sd)
    if getattr(model, "rpn", None) is not None and "rpn.tunable_linear.weight" in sd:
        model.enable_prompt_tuning()  # a prompt-tuned checkpoint
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for k, v in sd.items():
        if any(k.startswith(p) for p in IGNORED_KEY_PATTERNS):
            report.ignored.append(k)
            continue
        if k not in own:
            report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        target = own[k]
        to_load[k] = v.to(target.dtype) if v.is_floating_point() and target.is_floating_point() else v
    report.missing = [k for k in own if k not in sd and k not in to_load]
    report.loaded = len(to_load)  # in a strict failure: how many WOULD load (nothing is copied)
    if strict and not report.ok:
        raise CheckpointError(
            f"checkpoint {origin} does not fit this model ({_model_name(model)}): {report.summary()}"
        )
    with torch.no_grad():
        for k, v in to_load.items():
            own[k].copy_(v)
    report.loaded = len(to_load)
    return report


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "name", type(model).__name__)


def save_checkpoint(
    model: nn.Module,
    path: str,
    dtype: torch.dtype | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """safetensors with the model config in the metadata, so ``GLIPDetector.from_checkpoint`` needs no
    preset."""
    from safetensors.torch import save_file

    sd = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.contiguous().clone()
    meta = {"format": "pt"}
    cfg = getattr(model, "config", None)
    if isinstance(cfg, GLIPConfig):
        meta[CONFIG_METADATA_KEY] = cfg.to_json()
    if extra_metadata:
        meta.update({str(k): str(v) for k, v in extra_metadata.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)


def read_checkpoint_config(path: str) -> GLIPConfig | None:
    """The GLIPConfig stored by :func:`save_checkpoint`, or None (official files carry no config)."""
    if not _is_safetensors(path) or not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any header problem is a corrupt file
        raise CheckpointError(f"cannot read the header of {path}: {e}") from e
    raw = meta.get(CONFIG_METADATA_KEY)
    return GLIPConfig.from_dict(json.loads(raw)) if raw else None


def convert_to_safetensors(src: str, dst: str) -> dict[str, Any]:
    """One-time conversion of an official .pth that plain-tensor loading refuses (it unpickles objects).

    Runs ``torch.load(weights_only=False)``: only for files the user trusts; this is the one place that does.
    """
    from safetensors.torch import save_file

    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    _check_torch_save_format(src)
    try:
        obj = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in the unpickler or the zip reader
        first = str(e).splitlines()[0] if str(e) else "(no message)"
        raise CheckpointError(
            f"cannot load {src} (truncated, damaged, or pickling a class not installed here?): "
            f"{type(e).__name__}: {first}"
        ) from e
    sd = _strip_prefix(_extract_model_state(obj, src))
    sd = {k: v.contiguous().clone() for k, v in sd.items()}
    save_file(sd, dst, metadata={"format": "pt", "converted_from": os.path.basename(src)})
    return {"tensors": len(sd), "dst": dst}
