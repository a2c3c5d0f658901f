"""The course's small trained models (the zoo): a table of checkpoints per lesson, and the command that makes them.

    python -m bloomlib.training.zoo lesson04 --out bloomlib/assets/lesson04 [--only NAME] [--threads N] [--no-progress]
    python -m bloomlib.training.zoo lesson05 --out bloomlib/assets/lesson05 --only ladder    (--only: a name or a folder)

rebuilds a family's checkpoints (seeds and thread count fixed: the same command on the same machine gives the
same weights) and prints each one's final validation loss and training time. `load_zoo_model(name)` loads a
shipped one, e.g. load_zoo_model("lesson04/positions/alibi-seed0"); `zoo_model(name)` is its table entry (config,
training settings, task options) and `corpus_splits()` the token ids the corpus models trained and validated on.
A family is a tuple of ZooModel in FAMILIES.

lesson04 (Analyze):
  positions/<enc>-seed<s>  identical 2-layer GPTs on the course corpus (the course model's 512-token BPE) that differ
                           only in pos_encoding, trained on 64-token windows with a 512-token context window, so
                           that they can be run at 2-8 x the training length (learned positions past 64 are never
                           trained: they keep their N(0, 1) initialisation, shrunk only by weight decay).
  kv_recall                an ALiBi GPT trained on data.kv_recall_task with n_pairs mixed in KV_TRAIN_PAIRS (1-16)
                           and 64 keys, so that recall can be measured against the distance between the queried
                           pair and the query, inside the trained range and up to 4 x beyond it.

lesson05 (Evaluate):
  ladder/d<w>-s<steps>     15 2-layer RoPE GPTs on the course corpus, widths LADDER_WIDTHS x budgets LADDER_STEPS
                           (46k-184k tokens, under one epoch): the points a Chinchilla fit is made on.
  induction/attn<n>        attention-only (ffn="none") GPTs of 2 and 1 layers on data.repeated_tokens_task; the
                           2-layer one forms induction heads in a phase change (meta["history"] holds its loss curve).
  addition/step<s>         snapshots of one run on reversed 4-digit addition, from chance to all right, for exact
                           match against per-digit accuracy.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from bloomlib.checkpoint import Checkpoint, load_checkpoint, load_course_model, save_checkpoint
from bloomlib.config import GPTConfig
from bloomlib.model import GPT
from bloomlib.tokenizer import Tokenizer
from bloomlib.training.data import TaskSource, load_corpus, make_task, train_val_split
from bloomlib.training.train import TrainConfig, train

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # family F is shipped in ASSETS / F
DEFAULT_THREADS = 1  # two threads on a shared 2-core machine ran up to 40 x slower (OpenMP spin-waits)
COMMAND = "python -m bloomlib.training.zoo {family} --out bloomlib/assets/{family}"  # the documented command


@dataclass(frozen=True)
class ZooModel:
    """One checkpoint: what the model is (config), how it trains (train, whose seed also initialises it), on what
    (task: a TaskSource; None means the course corpus in the course model's tokenizer, 10% held out), and from
    which initialisation (init: "gpt2" keeps GPT's N(0, 0.02); "torch" resets every Linear, Embedding and
    LayerNorm to PyTorch's defaults: N(0, 1) embeddings, Kaiming-uniform linear weights). stop_at makes it a
    snapshot: the model after that many of train.steps steps, exactly as in the full run; `main` trains once for
    the snapshots of one run."""

    name: str
    config: GPTConfig
    train: TrainConfig
    task: TaskSource | None = None
    init: str = "gpt2"
    stop_at: int | None = None  # a snapshot: the first stop_at of train.steps (the lr schedule spans them all)

    def __post_init__(self) -> None:
        steps, every = self.train.steps, self.train.eval_interval
        if self.stop_at is not None and not (isinstance(self.stop_at, int) and 0 < self.stop_at <= steps
                                             and (self.stop_at % every == 0 or self.stop_at == steps)):
            raise ValueError(f"{self.name}: stop_at must be a multiple of train.eval_interval={every} in "
                             f"[1, train.steps={steps}] (snapshots are taken at evaluations), got {self.stop_at!r}")

    def same_run(self, other: ZooModel) -> bool:
        """Whether other is this run, or another snapshot of it (equal but for name and stop_at)."""
        return replace(self, name="", stop_at=None) == replace(other, name="", stop_at=None)


# --- lesson04 ------------------------------------------------------------------------------------------------------
# Both kinds start from PyTorch's initialisation, measured (500 steps, 2 layers, d_model 64): with GPT's N(0, 0.02)
# embeddings a sinusoidal signal (norm ~5.7 per position) drowns the tokens (norm ~0.16) and that model stays at
# the unigram loss (5.34), and key-value recall never leaves its plateau (8000 steps); tied embeddings at N(0, 1)
# leave learned and sinusoidal positions at or near the unigram loss, hence untied heads.
POS_ENCODINGS = ("sinusoidal", "learned", "rope", "alibi", "none")
POSITION_TRAIN_LEN = 64
KV_KEYS, KV_VALUES, KV_TRAIN_PAIRS = 64, 16, (1, 16)  # 64 keys: prompts of up to 64 pairs, 4 x the trained 16


def _positions(encoding: str, seed: int) -> ZooModel:
    config = GPTConfig(vocab_size=512, block_size=8 * POSITION_TRAIN_LEN, n_layer=2, n_head=4, d_model=64, d_ff=128,
                       pos_encoding=encoding, tie_weights=False)
    cfg = TrainConfig(steps=500, batch_size=16, seq_len=POSITION_TRAIN_LEN, warmup_steps=50, eval_interval=500,
                      eval_batches=20, seed=seed)
    return ZooModel(f"positions/{encoding}-seed{seed}", config, cfg, init="torch")


def _kv_recall() -> ZooModel:
    task = TaskSource("kv_recall", dict(n_keys=KV_KEYS, n_values=KV_VALUES), "n_pairs", KV_TRAIN_PAIRS)
    vocab = make_task("kv_recall", 1, torch.Generator(), **task.options).vocab_size
    config = GPTConfig(vocab_size=vocab, block_size=256, n_layer=2, n_head=4, d_model=64, d_ff=128,
                       pos_encoding="alibi", tie_weights=False)
    cfg = TrainConfig(steps=3000, batch_size=32, warmup_steps=100, weight_decay=0.0, eval_interval=3000,
                      eval_batches=20, seed=0)
    return ZooModel("kv_recall", config, cfg, task, init="torch")


# --- lesson05 ------------------------------------------------------------------------------------------------------
# Scaling ladder: 5 widths x 3 token budgets. Measured (1 thread): learned positions left every model on the unigram
# plateau (~5.3 nats) for the first ~100 steps, so that the short runs ranked by chance; RoPE leaves it within ~60
# steps. Tied embeddings (GPT's or PyTorch's init) ranked d_model 32-64 in no order at 180 steps; untied ones from
# PyTorch's init fall with width at every budget. d_model 64 untied would take the 15 checkpoints past 4 MB.
LADDER_WIDTHS = (12, 16, 24, 32, 48)
LADDER_STEPS = (180, 360, 720)
LADDER_BATCH, LADDER_SEQ_LEN = 4, 64  # 720 x 4 x 64 = 184,320 tokens: under one epoch of the 195,035 training ids
LADDER_LR = 1e-2
LADDER_EVAL_BATCHES = 80  # 80 x 4 windows of 64: 20k tokens, about the size of the 21,671 validation ids


def _ladder() -> tuple[ZooModel, ...]:
    """Scaling laws: GPTs of several widths, each trained on several token budgets of the course corpus.

    ladder/d{d_model}-s{steps}: 2 layers, 2 heads, RoPE, untied head, 64-token context, trained from PyTorch's
    init on steps x 4 x 64 tokens (46k, 92k, 184k tokens in random windows: under one epoch), each run with its own
    warmup + cosine schedule (as Chinchilla's runs: the schedule spans the run's budget)."""
    models = []
    for d_model in LADDER_WIDTHS:
        config = GPTConfig(vocab_size=512, block_size=LADDER_SEQ_LEN, n_layer=2, n_head=2, d_model=d_model,
                           pos_encoding="rope", tie_weights=False)
        for steps in LADDER_STEPS:
            cfg = TrainConfig(steps=steps, batch_size=LADDER_BATCH, seq_len=LADDER_SEQ_LEN, lr=LADDER_LR,
                              min_lr=LADDER_LR / 10, warmup_steps=steps // 10, eval_interval=steps,
                              eval_batches=LADDER_EVAL_BATCHES, seed=0)
            models.append(ZooModel(f"ladder/d{d_model}-s{steps}", config, cfg, init="torch"))
    return tuple(models)


# Induction heads (Olsson et al. 2022): attention-only GPTs on a random block repeated twice, its length drawn per
# batch so that no fixed positional offset finds the earlier copy. RoPE, measured (1500 steps, 2 layers): with
# learned positions the loss fell (4.0 -> 2.4 nats) with no head attending to the token after the earlier copy
# (prefix-matching scores <= 0.02); with RoPE layer-2 heads score 0.8-0.9 and two layer-1 heads attend to the
# previous token.
INDUCTION_SYMBOLS, INDUCTION_BLOCK_LENS = 64, (10, 50)  # 50: ARENA's test (50 random tokens, repeated twice)
# Addition (Schaeffer et al. 2023): snapshots of one run on 4-digit sums, answer reversed (least significant digit
# first, the order carries are computed). Measured every 50 steps (greedy, 2000 sums): per-digit accuracy 0.25 at
# step 100 (the leading 0/1 only), 0.54 at 800, 0.61 at 1200, 0.90 at 1400; exact match <= 0.02 up to 1250, then
# 0.59 at 1400 and 0.99 at 1600. The run's schedule spans 2000 steps; nothing after 1600 is kept.
ADDITION_DIGITS, ADDITION_STEPS = 4, 2000
ADDITION_SNAPSHOTS = (100, 600, 800, 1000, 1200, 1300, 1350, 1400, 1450, 1600)


def _emergence() -> tuple[ZooModel, ...]:
    """Emergence and in-context learning: addition models, attention-only models on repeated random tokens.

    induction/attn2, induction/attn1: attention-only GPTs (ffn="none", RoPE, d_model 64, 4 heads) of 2 and 1 layers
    on data.repeated_tokens_task (64 symbols, a block of 10-50 tokens, repeated once), 1500 steps, evaluated every
    25 (meta["history"] shows the phase change). addition/stepNNNN: a 2-layer d_model 32 GPT on 4-digit sums
    (reversed answer) after NNNN of its 2000 steps, all from one run.
    """
    task = TaskSource("repeated_tokens", dict(n_symbols=INDUCTION_SYMBOLS), "block_len", INDUCTION_BLOCK_LENS)
    cfg = TrainConfig(steps=1500, batch_size=32, warmup_steps=50, weight_decay=0.0, eval_interval=25,
                      eval_batches=4, seed=0)
    induction = tuple(ZooModel(f"induction/attn{n_layer}", GPTConfig(
        vocab_size=INDUCTION_SYMBOLS, block_size=2 * INDUCTION_BLOCK_LENS[1], n_layer=n_layer, n_head=4, d_model=64,
        pos_encoding="rope", ffn="none", tie_weights=False), cfg, task) for n_layer in (2, 1))
    task = TaskSource("addition", dict(n_digits=ADDITION_DIGITS, reverse_answer=True))
    config = GPTConfig(vocab_size=12, block_size=3 * ADDITION_DIGITS + 2, n_layer=2, n_head=4, d_model=32,
                       tie_weights=False)
    cfg = TrainConfig(steps=ADDITION_STEPS, batch_size=64, warmup_steps=50, weight_decay=0.0, eval_interval=50,
                      eval_batches=4, seed=0)
    addition = tuple(ZooModel(f"addition/step{s:04d}", config, cfg, task, stop_at=s) for s in ADDITION_SNAPSHOTS)
    return induction + addition


FAMILIES: dict[str, tuple[ZooModel, ...]] = {
    "lesson04": tuple(_positions(e, s) for e in POS_ENCODINGS for s in (0, 1)) + (_kv_recall(),),
    "lesson05": _ladder() + _emergence(),
}


def zoo_model(name: str) -> ZooModel:
    """The table entry of "family/name", e.g. "lesson04/kv_recall"."""
    family, _, rest = name.partition("/")
    for spec in FAMILIES.get(family, ()):
        if spec.name == rest:
            return spec
    raise ValueError(f"no zoo model {name!r}; the table has {sorted(zoo_names())}")


def zoo_names() -> list[str]:
    """Every "family/name" in the table, shipped or not."""
    return [f"{family}/{spec.name}" for family, specs in FAMILIES.items() for spec in specs]


def shipped_models() -> list[str]:
    """Names of the zoo models whose checkpoint folder is in bloomlib/assets."""
    return [name for name in zoo_names() if (ASSETS / name / "config.json").is_file()]


def load_zoo_model(name: str, device: torch.device | str | None = None) -> Checkpoint:
    """A shipped zoo checkpoint, e.g. load_zoo_model("lesson04/positions/alibi-seed0") (see load_checkpoint)."""
    if name not in shipped_models():
        family = name.partition("/")[0]
        hint = f"; build it with `{COMMAND.format(family=family)}`" if name in zoo_names() else ""
        raise ValueError(f"zoo model {name!r} is not shipped{hint}; available: {shipped_models()}")
    return load_checkpoint(ASSETS / name, device=device)


def corpus_splits() -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """(tokenizer, train ids, val ids): the course corpus in the course model's tokenizer, the last 10% held out
    (what the position models train and validate on; 1-D LongTensors)."""
    tok = load_course_model().tokenizer
    train_ids, val_ids = train_val_split(tok.encode(load_corpus()), 0.1)
    return tok, train_ids, val_ids


def init_model(spec: ZooModel) -> GPT:
    """spec's model as its seed initialises it (on the CPU); the global random state is left as it was."""
    if spec.init not in ("gpt2", "torch"):
        raise ValueError(f"{spec.name}: init must be 'gpt2' or 'torch', got {spec.init!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.train.seed)
        model = GPT(spec.config)
        if spec.init == "torch":
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                    module.reset_parameters()
    return model


def build(spec: ZooModel, out: str | Path, command: str, progress: bool = False, corpus=None,
          device: torch.device | str = "cpu", snapshots: Sequence[tuple[ZooModel, str | Path]] = ()) -> dict:
    """Train `spec` from its seed and save it to `out` (a checkpoint folder) with meta recording `command` and the
    validation loss at every evaluation (meta["history"]).

    corpus: corpus_splits()'s result, reused across corpus models (tokenizing once).
    snapshots: (snapshot, folder) pairs of earlier snapshots of the same run (spec.same_run), saved on the way.
    Returns the saved meta of spec.
    """
    stop = spec.stop_at or spec.train.steps
    for snap, _ in snapshots:
        if not spec.same_run(snap) or (snap.stop_at or snap.train.steps) >= stop:
            raise ValueError(f"{snap.name} is not a snapshot of {spec.name}'s run taken before step {stop}")
    if spec.task is None:
        tok, train_data, val_data = corpus or corpus_splits()
        if tok.vocab_size != spec.config.vocab_size:
            raise ValueError(f"{spec.name}: config.vocab_size={spec.config.vocab_size} but the course tokenizer has "
                             f"{tok.vocab_size} ids")
        data = {"corpus": "pydoc_data.topics", "n_tokens": len(train_data) + len(val_data), "val_fraction": 0.1}
    else:
        tok, train_data, val_data = None, spec.task, spec.task
        data = {"task": spec.task.name, "options": spec.task.options, "vary": spec.task.vary,
                "vary_range": list(spec.task.vary_range or ())}
    model = init_model(spec).to(device)
    wanted = {snap.stop_at: snap for snap, _ in snapshots}
    taken: dict[int, tuple[GPT, float]] = {}  # step -> (a copy of the model, seconds of training so far)

    def on_eval(step: int, trained: nn.Module) -> bool:
        if step in wanted:
            taken[step] = copy.deepcopy(trained), time.perf_counter() - t0
        return step >= stop

    t0 = time.perf_counter()
    hist = train(model, train_data, val_data, spec.train, progress=progress, log=None, on_eval=on_eval)
    taken[stop] = model, time.perf_counter() - t0
    metas = {}
    for snap, folder in [*snapshots, (spec, out)]:
        step = snap.stop_at or snap.train.steps
        n = hist["eval_step"].index(step) + 1  # the evaluations up to this snapshot
        snap_model, seconds = taken[step]
        meta = {"val_loss": hist["val_loss"][n - 1], "train": asdict(snap.train), "init": snap.init, "data": data,
                "history": {"step": hist["eval_step"][:n], "val_loss": hist["val_loss"][:n]},
                "command": command, "threads": torch.get_num_threads(), "train_seconds": round(seconds, 1),
                "torch": torch.__version__, "python": ".".join(map(str, sys.version_info[:3]))}
        if snap.stop_at is not None:
            meta["stop_at"] = snap.stop_at
        if snap.task is None:  # a task's batches are all fresh: its "train loss" would be the validation loss again
            meta["train_loss"] = hist["train_loss"][n - 1]
        save_checkpoint(folder, snap_model.float().cpu(), tok, meta)
        metas[snap.name] = meta
    return metas[spec.name]


def main(argv: list[str] | None = None) -> int:
    """Rebuild a family of zoo checkpoints."""
    p = argparse.ArgumentParser(prog="python -m bloomlib.training.zoo", description=main.__doc__)
    p.add_argument("family", choices=sorted(FAMILIES))
    p.add_argument("--out", required=True, help="folder to write the family's checkpoints into")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="build only this model, or the models in this folder (repeatable), e.g. "
                        "positions/alibi-seed0, positions")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}; the weights depend on it)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    specs = FAMILIES[args.family]
    if args.only:
        def chosen(spec: ZooModel, only: str) -> bool:
            return spec.name == only or spec.name.startswith(only.rstrip("/") + "/")

        unknown = sorted(o for o in set(args.only) if not any(chosen(s, o) for s in specs))
        if unknown:
            p.error(f"--only {unknown}: {args.family} has {[s.name for s in specs]}")
        specs = tuple(s for s in specs if any(chosen(s, o) for o in args.only))
    if args.threads <= 0:
        p.error(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    command = "python -m bloomlib.training.zoo " + " ".join(sys.argv[1:] if argv is None else argv)
    corpus = corpus_splits() if any(s.task is None for s in specs) else None
    t0 = time.perf_counter()
    runs: list[list[ZooModel]] = []  # the snapshots of one run are trained once, by its last one
    for spec in specs:
        run = next((r for r in runs if r[0].same_run(spec)), None)
        if run is None:
            runs.append([spec])
        else:
            run.append(spec)
    for run in runs:
        run.sort(key=lambda s: s.stop_at or s.train.steps)
        *earlier, last = run
        build(last, Path(args.out) / last.name, command, progress=not args.no_progress, corpus=corpus,
              snapshots=[(s, Path(args.out) / s.name) for s in earlier])
        for spec in run:
            meta = load_checkpoint(Path(args.out) / spec.name).meta
            print(f"{args.family}/{spec.name}: val loss {meta['val_loss']:.4f} in {meta['train_seconds']:.1f} s",
                  flush=True)
    print(f"{len(specs)} model(s) in {time.perf_counter() - t0:.0f} s; saved under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
