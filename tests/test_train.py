"""Training loop pieces, and the shipped course model (its size, and that its command reproduces it)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bloomlib.config import GPTConfig
from bloomlib.model import COURSE_MODEL, DRAFT_MODEL, GPT
from bloomlib.training.train import COURSE_COMMAND, TrainConfig, evaluate, lm_loss, lr_at, make_optimizer, train


def test_lr_schedule_matches_torch_schedulers():
    cfg = TrainConfig(steps=60, warmup_steps=10, lr=1e-2, min_lr=1e-3)
    # warmup: torch's LinearLR from 1/10 to 1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 10, end_factor=1.0, total_iters=9)
    for step in range(10):
        assert lr_at(step, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step(); warm.step()
    # decay: torch's CosineAnnealingLR from lr to min_lr over steps - warmup_steps
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps - cfg.warmup_steps, eta_min=cfg.min_lr)
    for step in range(cfg.warmup_steps, cfg.steps + 1):
        assert lr_at(step, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step(); cos.step()


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig.preset("tiny"))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len({id(p) for p in model.parameters()})  # tied weights once


def test_lm_loss_equals_cross_entropy_by_hand():
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    targets = torch.tensor([[1, 4, -100], [0, 2, 3]])
    by_hand = []
    for b in range(2):
        for t in range(3):
            if targets[b, t] != -100:
                row = logits[b, t]
                by_hand.append(math.log(row.exp().sum()) - row[targets[b, t]].item())
    assert lm_loss(logits, targets).item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-6)


def test_training_lowers_loss_on_repeating_text():
    torch.manual_seed(0)
    data = torch.arange(8).repeat(200)  # a period-8 sequence: perfectly predictable after one step
    model = GPT(GPTConfig.preset("tiny", vocab_size=8, block_size=16))
    before = evaluate(model, data, 8, 16, 2)
    hist = train(model, data, data, TrainConfig(steps=150, batch_size=8, lr=1e-2, warmup_steps=10, eval_interval=150,
                                                eval_batches=2), progress=False, log=None)
    assert before > 1.9  # ~ln 8 for an untrained model
    assert hist["val_loss"][-1] < 0.2
    assert len(hist["loss"]) == 150 and hist["eval_step"] == [150]


@pytest.mark.parametrize("folder", [COURSE_MODEL, DRAFT_MODEL], ids=["course", "draft"])
def test_shipped_model_is_small_and_loads(folder):
    from bloomlib.checkpoint import load_checkpoint

    size = sum(f.stat().st_size for f in Path(folder).iterdir())
    assert size <= 5_000_000, f"{folder} is {size / 1e6:.1f} MB; the course ships at most 5 MB"
    ckpt = load_checkpoint(folder)
    meta = ckpt.meta
    assert meta["corpus"] == "pydoc_data.topics" and meta["val_loss"] < meta.get("max_val_loss", 10)
    tok = ckpt.tokenizer
    text = "The return statement leaves the current function call."
    ids = torch.tensor([tok.encode(text)])
    # the shipped model predicts real English far better than chance (ln 512 = 6.24 nats)
    loss = lm_loss(ckpt.model(ids[:, :-1]), ids[:, 1:]).item()
    assert loss < 5.0


@pytest.mark.slow
def test_course_command_reproduces_shipped_val_loss(tmp_path):
    """Re-run the documented command; its validation loss must land within 0.1 nats of the shipped one."""
    shipped = json.loads((COURSE_MODEL / "config.json").read_text())["meta"]
    args = COURSE_COMMAND.split()[3:]  # after "python -m bloomlib.training.train"
    args[args.index("--out") + 1] = str(tmp_path / "model")
    out = subprocess.run([sys.executable, "-m", "bloomlib.training.train", *args, "--no-progress"],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads((tmp_path / "model" / "config.json").read_text())["meta"]
    assert abs(again["val_loss"] - shipped["val_loss"]) < 0.1, (again["val_loss"], shipped["val_loss"])


@pytest.mark.slow
def test_torch_compile_trains_like_eager():
    """`TrainConfig(compile=True)` (torch.compile, the GPU fast path) gives the same losses as eager mode."""
    data = torch.arange(8).repeat(100)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("tiny", vocab_size=8, block_size=16))
        cfg = TrainConfig(steps=5, batch_size=4, warmup_steps=1, eval_interval=5, eval_batches=1, compile=compiled)
        losses[compiled] = train(model, data, data, cfg, progress=False, log=None)["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
