"""Checkpoints are folders, never pickles:

    model.safetensors   the weights (tied weights stored once; loading runs no code)
    config.json         {"architecture": "GPT", "config": GPTConfig.to_dict(), "dtype": "float32", "meta": {...}}
    tokenizer.json      optional, see bloomlib.tokenizer

`architecture` names an entry of ARCHITECTURES, a class built as `cls(config)`; tests may register their own.
How a model runs (its attention backend, its device) is not saved: `load_checkpoint(..., attn_backend=, device=)`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from bloomlib.attention import set_attention_backend
from bloomlib.config import GPTConfig
from bloomlib.encoder import Encoder, EncoderDecoder
from bloomlib.model import COURSE_MODEL, DRAFT_MODEL, GPT
from bloomlib.tokenizer import Tokenizer, load_tokenizer

ARCHITECTURES: dict[str, type] = {"GPT": GPT, "Encoder": Encoder, "EncoderDecoder": EncoderDecoder}
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


@dataclass
class Checkpoint:
    model: torch.nn.Module
    tokenizer: Tokenizer | None = None
    meta: dict = field(default_factory=dict)
    architecture: str = "GPT"


def save_checkpoint(folder: str | Path, model: torch.nn.Module, tokenizer: Tokenizer | None = None,
                    meta: dict | None = None) -> Path:
    """Write `model` (which must carry `model.config`, a GPTConfig) and optionally its tokenizer to `folder`."""
    name = type(model).__name__
    if ARCHITECTURES.get(name) is not type(model):
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


def load_checkpoint(folder: str | Path, device: torch.device | str | None = None,
                    attn_backend: str | None = None) -> Checkpoint:
    """Rebuild the model from config.json, load its weights, and return it in eval mode on `device`,
    computing attention with `attn_backend` ("sdpa" when None; see GPT.set_attention_backend)."""
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
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[name](config).to(dtype)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (RuntimeError, SafetensorError) as e:
        raise ValueError(f"{folder / WEIGHTS} does not match a {name} built from config.json: {e}") from None
    model.to(device if device is not None else "cpu").eval()
    if attn_backend is not None:
        set_attention_backend(model, attn_backend)
    tokenizer = load_tokenizer(folder / TOKENIZER) if (folder / TOKENIZER).is_file() else None
    return Checkpoint(model, tokenizer, header.get("meta") or {}, name)


def load_course_model(draft: bool = False, device: torch.device | str | None = None,
                      attn_backend: str | None = None) -> Checkpoint:
    """The course's shipped model (or its speculative-decoding draft) with its tokenizer."""
    return load_checkpoint(DRAFT_MODEL if draft else COURSE_MODEL, device=device, attn_backend=attn_backend)
