"""Training a GPT: AdamW, warmup + cosine learning rate, gradient clipping, periodic evaluation.

As a module:  python -m bloomlib.training.train --preset course --out runs/course   (also `bloomlib train`)
On several processes: torchrun --nproc_per_node=N -m bloomlib.training.train ...  (DistributedDataParallel, see `train`)
The course model in bloomlib/assets/course_model was made by COURSE_COMMAND below; its draft model's
command is recorded in bloomlib/assets/draft_model/config.json (and in README.md).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.config import GPTConfig
from bloomlib.training.data import get_batch, load_corpus, train_val_split
from bloomlib.device import autocast, seed_everything

COURSE_COMMAND = "python -m bloomlib.training.train --preset course --out bloomlib/assets/course_model"

# What the loop trains on: a 1-D id tensor (random windows of it), or a callable (batch_size, generator, device)
# -> (inputs, targets) such as bloomlib.training.data.TaskSource.
Data = torch.Tensor | Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    """Optimisation settings (nanoGPT's defaults, scaled down for a laptop CPU)."""

    steps: int = 1200
    batch_size: int = 8
    seq_len: int | None = None  # training sequence length; None means the model's block_size
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    seed: int = 0
    compile: bool = False  # torch.compile the model (worth it on a GPU; slow to start on a CPU)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (weights, embeddings) and none on biases and norm gains."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits: (B, T, V); targets: (B, T), -100 = no loss."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def draw_batch(data: Data, batch_size: int, seq_len: int, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (batch_size, T): seq_len-token windows of an id tensor, or a batch of a source."""
    if callable(data):
        return data(batch_size, generator, device)
    return get_batch(data, batch_size, seq_len, generator=generator, device=device)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int, seq_len: int, n_batches: int,
             seed: int = 1234) -> float:
    """Mean loss over n_batches fixed random batches of `data` (the same batches every call)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_batches):
        x, y = draw_batch(data, batch_size, seq_len, gen, device)
        with autocast(device):
            losses.append(lm_loss(model(x), y).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def train(model: nn.Module, train_data: Data, val_data: Data, cfg: TrainConfig,
          progress: bool = True, log=print, on_eval: Callable[[int, nn.Module], bool | None] | None = None) -> dict:
    """Train `model` on next-token prediction over random windows of `train_data` (1-D LongTensor), or on the
    batches of a callable source (e.g. a TaskSource; targets of -100 carry no loss).

    Returns a history dict: step, lr and loss per step; eval_step, train_loss and val_loss per evaluation.
    on_eval(steps_done, model) is called after each evaluation (e.g. to save a snapshot); when it returns True,
    training stops there (the learning-rate schedule still spans cfg.steps: the run is the start of the full one).
    One process only: under torchrun rank 0 alone evaluates, and could not stop the others.

    Inside a torch.distributed process group (torchrun) the model is wrapped in DistributedDataParallel:
    cfg.batch_size is per rank, so the global batch is batch_size x world_size. Every rank draws the same global
    batch of windows and trains on its own slice of it (rank r: rows r*B..(r+1)*B-1), so N ranks take exactly the
    steps one process would take with batch_size x N. Rank 0 alone evaluates (on global batches), logs and shows
    progress; the logged loss is the mean over ranks.
    """
    from tqdm.auto import tqdm

    from bloomlib.training.distributed import rank_and_world, unwrap

    rank, world = rank_and_world()
    if on_eval is not None and world > 1:
        raise ValueError(f"on_eval works in one process, not in a group of {world} (only rank 0 evaluates)")
    raw = unwrap(model)
    device = next(model.parameters()).device
    if world > 1 and raw is model:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    progress, log = progress and rank == 0, log if rank == 0 else None
    seq_len = cfg.seq_len or raw.config.block_size
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(raw, cfg)
    hist = {"step": [], "lr": [], "loss": [], "eval_step": [], "train_loss": [], "val_loss": []}
    model.train()
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress, mininterval=1.0)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = draw_batch(train_data, cfg.batch_size * world, seq_len, gen, device)
        if world > 1:  # this rank's slice of the global batch
            rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
            x, y = x[rows], y[rows]
        with autocast(device):
            loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        hist["step"].append(step)
        hist["lr"].append(lr)
        if world > 1:
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= world
        hist["loss"].append(loss.item())
        if rank == 0 and ((step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps):
            tr = evaluate(raw, train_data, cfg.batch_size * world, seq_len, cfg.eval_batches)
            va = evaluate(raw, val_data, cfg.batch_size * world, seq_len, cfg.eval_batches)
            hist["eval_step"].append(step + 1)
            hist["train_loss"].append(tr)
            hist["val_loss"].append(va)
            bar.set_postfix(train=f"{tr:.3f}", val=f"{va:.3f}")
            if not progress and log:
                log(f"step {step + 1}: train {tr:.4f}, val {va:.4f}")
            if on_eval is not None and on_eval(step + 1, raw):
                break
    bar.close()
    model.eval()
    return hist


def main(argv: list[str] | None = None) -> int:
    """Train a GPT on the course corpus and save a checkpoint folder (weights, config, tokenizer).
    Under torchrun every rank builds the same tokenizer and model (same seed); rank 0 prints and saves."""
    p = argparse.ArgumentParser(prog="python -m bloomlib.training.train", description=main.__doc__)
    p.add_argument("--preset", default="course", help="GPTConfig preset (default: course)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--tokenizer-from", default=None, help="reuse the tokenizer of this checkpoint folder")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    defaults = TrainConfig()
    names = ("steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
             "eval_interval", "eval_batches", "seed")
    for name in names:
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(value) if value is not None else int, default=value)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{k: getattr(args, k) for k in names + ("compile",)})
    from bloomlib.checkpoint import load_checkpoint, save_checkpoint
    from bloomlib.training.distributed import init_distributed
    from bloomlib.model import GPT
    from bloomlib.tokenizer import ByteBPETokenizer, CharTokenizer

    seed_everything(cfg.seed)
    text = load_corpus()
    model_cfg = GPTConfig.preset(args.preset)
    if args.tokenizer_from:
        tok = load_checkpoint(args.tokenizer_from).tokenizer
    elif args.tokenizer == "bpe":
        tok = ByteBPETokenizer.train(text, model_cfg.vocab_size)
    else:
        tok = CharTokenizer.train(text)
    model_cfg = GPTConfig.preset(args.preset, vocab_size=tok.vocab_size)
    dist_info = init_distributed(args.device)
    device = dist_info.device
    model = GPT(model_cfg).to(device)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_data, val_data = train_val_split(ids, 0.1)
    say = print if dist_info.is_main else (lambda *a: None)
    world = dist_info.world_size
    say(f"corpus: {len(text):,} characters -> {len(ids):,} tokens; model: {model_cfg}; device: {device}"
        + (f"; {world} processes, global batch {cfg.batch_size * world}" if world > 1 else ""))
    t0 = time.perf_counter()
    hist = train(model, train_data, val_data, cfg, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    if not dist_info.is_main:
        torch.distributed.destroy_process_group()
        return 0
    meta = {"val_loss": hist["val_loss"][-1], "train_loss": hist["train_loss"][-1], "train": asdict(cfg),
            "command": "python -m bloomlib.training.train " + " ".join(sys.argv[1:] if argv is None else argv),
            "train_seconds": round(seconds, 1), "corpus": "pydoc_data.topics", "n_tokens": len(ids),
            "torch": torch.__version__}
    if world > 1:
        meta["world_size"] = world
    save_checkpoint(args.out, model.float().cpu(), tok, meta)
    if world > 1:
        torch.distributed.destroy_process_group()
    print(f"val loss {hist['val_loss'][-1]:.4f} after {cfg.steps} steps in {seconds:.0f} s; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
