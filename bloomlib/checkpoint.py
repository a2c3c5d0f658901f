"""Checkpoints are folders, never pickles:

    model.safetensors   the weights (tied weights stored once; loading runs no code)
    config.json         {"architecture": "GPT", "config": GPTConfig.to_dict(), "dtype": "float32", "meta": {...}}
    tokenizer.json      optional, see bloomlib.tokenizer

`architecture` names an entry of ARCHITECTURES, a class built as `cls(config)`; the course's classes are
imported lazily, and tests may register their own.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .config import GPTConfig
from .tokenizer import Tokenizer, load_tokenizer

# name -> class, or "module:Class" imported on first use
ARCHITECTURES: dict[str, type | str] = {
    "GPT": "bloomlib.model:GPT",
    "Encoder": "bloomlib.encoder:Encoder",
    "EncoderDecoder": "bloomlib.encoder:EncoderDecoder",
}
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


@dataclass
class Checkpoint:
    model: torch.nn.Module
    tokenizer: Tokenizer | None = None
    meta: dict = field(default_factory=dict)
    architecture: str = "GPT"


def _resolve(name: str) -> type:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[name]
    if isinstance(cls, str):
        module, attr = cls.split(":")
        cls = ARCHITECTURES[name] = getattr(importlib.import_module(module), attr)
    return cls


def save_checkpoint(folder: str | Path, model: torch.nn.Module, tokenizer: Tokenizer | None = None,
                    meta: dict | None = None) -> Path:
    """Write `model` (which must carry `model.config`, a GPTConfig) and optionally its tokenizer to `folder`."""
    name = type(model).__name__
    if name not in ARCHITECTURES or _resolve(name) is not type(model):
        raise ValueError(f"cannot save a {name}: register its class in bloomlib.checkpoint.ARCHITECTURES")
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise ValueError(f"model.config must be a GPTConfig, got {type(config).__name__}")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"model has mixed parameter dtypes {sorted(map(str, dtypes))}; cast it to one first")
    header = {"architecture": name, "config": config.to_dict(),
              "dtype": str(dtypes.pop()).removeprefix("torch.") if dtypes else "float32", "meta": meta or {}}
    try:
        text = json.dumps(header, indent=2)
    except TypeError as e:
        raise ValueError(f"meta must be JSON-serializable: {e}") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS), metadata={"format": "pt"})  # keeps one copy of tied tensors
    (folder / CONFIG).write_text(text + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER)
    elif (folder / TOKENIZER).exists():
        (folder / TOKENIZER).unlink()  # a stale tokenizer would silently mismatch the model
    return folder


def load_checkpoint(folder: str | Path, device: torch.device | str | None = None) -> Checkpoint:
    """Rebuild the model from config.json, load its weights, and return it in eval mode on `device`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {str(folder)!r} does not exist")
    for fname in (CONFIG, WEIGHTS):
        if not (folder / fname).is_file():
            raise ValueError(f"checkpoint folder {str(folder)!r} lacks {fname}")
    try:
        header = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG} is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not {"architecture", "config"} <= set(header):
        raise ValueError(f"{folder / CONFIG} must hold an object with 'architecture' and 'config'")
    if not isinstance(header["config"], dict):
        raise ValueError(f"{folder / CONFIG}: 'config' must be an object")
    config = GPTConfig.from_dict(header["config"])
    dtype = getattr(torch, str(header.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{folder / CONFIG}: unknown dtype {header.get('dtype')!r}")
    name = header["architecture"]
    model = _resolve(name)(config).to(dtype)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (RuntimeError, SafetensorError) as e:
        raise ValueError(f"{folder / WEIGHTS} does not match a {name} built from config.json: {e}") from None
    model.to(device if device is not None else "cpu").eval()
    tokenizer = load_tokenizer(folder / TOKENIZER) if (folder / TOKENIZER).is_file() else None
    return Checkpoint(model, tokenizer, header.get("meta") or {}, name)
