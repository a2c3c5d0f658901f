"""Data parallelism (DDP over 2 gloo processes) equals one process on the same global batch; the tensor-parallel
MLP over 2 processes equals the dense MLP (forward and gradients)."""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bloomlib.blocks import FeedForward
from bloomlib.checkpoint import load_checkpoint
from bloomlib.config import GPTConfig
from bloomlib.training.distributed import TensorParallelMLP, launch, tensor_parallel_demo
from bloomlib.model import GPT
from bloomlib.training.train import TrainConfig, main, train

CFG = GPTConfig.preset("tiny", block_size=16)
TRAIN = dict(steps=6, lr=1e-2, warmup_steps=2, eval_interval=6, eval_batches=1, seed=3)


def _data() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (3000,), generator=torch.Generator().manual_seed(0))


def _trained(batch_size: int) -> tuple[GPT, dict]:
    torch.manual_seed(0)
    model = GPT(CFG).double()
    hist = train(model, _data(), _data(), TrainConfig(batch_size=batch_size, **TRAIN), progress=False, log=None)
    return model, hist


def _ddp_worker(rank: int, world: int, out: str) -> None:
    model, hist = _trained(batch_size=2)  # per rank: global batch 2 x world
    if rank == 0:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_file({**state, "loss": torch.tensor(hist["loss"], dtype=torch.float64)}, out)


def test_ddp_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    launch(_ddp_worker, 2, str(tmp_path / "ddp.safetensors"))
    ddp = load_file(tmp_path / "ddp.safetensors")
    single, hist = _trained(batch_size=4)
    torch.testing.assert_close(ddp.pop("loss"), torch.tensor(hist["loss"], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.manual_seed(0)
    init = GPT(CFG).double().state_dict()
    half, _ = _trained(batch_size=2)  # one rank's half of the batch alone gives other parameters
    for name, p in single.state_dict().items():
        torch.testing.assert_close(ddp[name], p, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}: {m}")
    moved = [n for n, p in single.state_dict().items() if not torch.allclose(p, init[n], atol=1e-4)]
    assert len(moved) > len(init) // 2
    assert any(not torch.allclose(half.state_dict()[n], ddp[n], atol=1e-4) for n in moved)


KINDS = ("gelu", "gelu_tanh", "relu")


def _tp_worker(rank: int, world: int, folder: str) -> None:
    for kind in KINDS:
        torch.manual_seed(0)
        tp = TensorParallelMLP(FeedForward(GPTConfig.preset("tiny", ffn=kind)).double(), rank, world)
        x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = tp(x)
        y.backward(torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
        grads = {n: p.grad for n, p in tp.named_parameters()}
        save_file({"y": y.detach(), "x_grad": x.grad, **grads}, os.path.join(folder, f"{kind}{rank}.safetensors"))


def test_tensor_parallel_mlp_on_two_processes_equals_the_dense_mlp(tmp_path):
    launch(_tp_worker, 2, str(tmp_path))
    for kind, r in itertools.product(KINDS, range(2)):
        torch.manual_seed(0)
        ffn = FeedForward(GPTConfig.preset("tiny", ffn=kind)).double()
        x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = ffn(x)
        y.backward(torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
        half = ffn.up.out_features // 2
        got = load_file(tmp_path / f"{kind}{r}.safetensors")
        rows = slice(r * half, (r + 1) * half)
        torch.testing.assert_close(got["y"], y.detach())  # every rank ends with the full output
        torch.testing.assert_close(got["x_grad"], x.grad)
        torch.testing.assert_close(got["up.weight"], ffn.up.weight.grad[rows])  # column-parallel: output rows
        torch.testing.assert_close(got["up.bias"], ffn.up.bias.grad[rows])
        torch.testing.assert_close(got["down.weight"], ffn.down.weight.grad[:, rows])  # row-parallel: input cols
        torch.testing.assert_close(got["down.bias"], ffn.down.bias.grad)


def test_tensor_parallel_rejects_uneven_split_and_swiglu():
    with pytest.raises(ValueError, match="out_features=128 must be divisible by world_size=3"):
        TensorParallelMLP(FeedForward(GPTConfig.preset("tiny")), 0, 3)
    with pytest.raises(ValueError, match="swiglu"):
        TensorParallelMLP(FeedForward(GPTConfig.preset("tiny", ffn="swiglu")), 0, 2)


def test_torchrun_cli_trains_like_one_process_and_only_rank_0_saves(tmp_path):
    args = ["--preset", "tiny", "--tokenizer", "char", "--steps", "4", "--warmup-steps", "1", "--eval-interval", "4",
            "--eval-batches", "1", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "bloomlib.training.train", *args, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("val loss") == 1 and "2 processes, global batch 4" in run.stdout
    assert main([*args, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert ddp.meta["world_size"] == 2 and "world_size" not in one.meta
    # float32: the all-reduce sums in another order, and Adam divides near-zero gradients (the key biases get
    # none in exact math) by their own size, so such noise moves a few parameters by ~1e-6 (an update is ~3e-3)
    for (name, a), (_, b) in zip(ddp.model.state_dict().items(), one.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5, msg=lambda m: f"{name}: {m}")
    assert ddp.meta["val_loss"] == pytest.approx(one.meta["val_loss"], rel=1e-5)  # evaluated on global batches
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["meta"]["command"]


def test_tensor_parallel_demo_for_the_lesson_on_four_processes():
    out = tensor_parallel_demo(world_size=4)
    assert out["up_shape"] == ((128, 32), (32, 32)) and out["down_shape"] == ((32, 128), (32, 32))
    assert out["output_diff"] < 1e-12 and out["input_grad_diff"] < 1e-12


def test_tp_demo_command_prints_the_demo_as_json_and_refuses_bad_sizes(capsys):
    from bloomlib import cli

    assert cli.main(["tp-demo", "--world-size", "2", "--d-model", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["up_shape"] == [[64, 16], [32, 16]] and out["down_shape"] == [[16, 64], [16, 32]]
    assert out["output_diff"] < 1e-12 and out["input_grad_diff"] < 1e-12
    with pytest.raises(SystemExit):
        cli.main(["tp-demo", "--world-size", "0"])
    assert "--world-size and --d-model must be positive" in capsys.readouterr().err
