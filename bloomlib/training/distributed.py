"""Scale-out on torch.distributed: data parallelism for training, and a tensor-parallel MLP sketch.

Data parallel (DDP): every rank holds the whole model and reads its own slice of the global batch; backward
all-reduces (averages) the gradients, so every rank takes the same optimizer step.
    torchrun --nproc_per_node=N -m bloomlib.training.train ...     (gloo on CPU, nccl on CUDA)

Tensor parallel (Megatron-LM, Shoeybi et al. 2019): one layer's matrices are split across ranks. In an MLP,
`up` is split by output features (ColumnParallelLinear: each rank computes a slice of the hidden units, the
activation is elementwise so it needs no communication) and `down` by input features (RowParallelLinear: each
rank computes a partial sum of the output; one all-reduce adds them). One all-reduce per MLP forward, one in
backward (for the input's gradient).
    bloomlib tp-demo [--world-size N]      runs tensor_parallel_demo and prints its result as JSON, in a process
of its own (as torchrun would), so that the workers and multiprocessing's helper process end with it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from bloomlib.blocks import FeedForward
from bloomlib.config import GPTConfig
from bloomlib.device import get_device


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT):
    nccl with one GPU per local rank on CUDA, gloo on CPU. A plain `python` run stays a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        return DistInfo(0, 0, 1, get_device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = get_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), local, dist.get_world_size(), dev)


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def launch(fn, world_size: int, *args) -> None:
    """Run fn(rank, world_size, *args) in `world_size` new CPU processes joined by gloo on 127.0.0.1 (what
    torchrun does for a script). fn must be importable (defined in a module, not in a notebook cell)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_entry, args=(world_size, port, fn, args), nprocs=world_size, join=True)


def _entry(rank: int, world_size: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # Free what fn left holding the group (a DDP reducer in a reference cycle), then tear the group down on
        # every rank together: without this a rank rarely aborted (SIGABRT) at teardown in CI.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


class _CopyToParallel(torch.autograd.Function):
    """Megatron's f: identity forward; backward sums the input gradients of all ranks' slices."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _ReduceFromParallel(torch.autograd.Function):
    """Megatron's g: forward sums the partial outputs of all ranks; identity backward."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def _shard(n: int, world_size: int, rank: int, what: str) -> slice:
    if n % world_size:
        raise ValueError(f"{what}={n} must be divisible by world_size={world_size}")
    size = n // world_size
    return slice(rank * size, (rank + 1) * size)


class ColumnParallelLinear(nn.Module):
    """Rank r holds out_features / world_size rows of W: (..., in) -> (..., out / world_size), its slice of y."""

    def __init__(self, linear: nn.Linear, rank: int, world_size: int) -> None:
        super().__init__()
        rows = _shard(linear.out_features, world_size, rank, "out_features")
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone())
        self.bias = nn.Parameter(linear.bias.detach()[rows].clone()) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_CopyToParallel.apply(x), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Rank r holds in_features / world_size columns of W: its input slice (..., in / world_size) -> the full
    (..., out), summed over ranks by an all-reduce; the bias is added once, after the sum."""

    def __init__(self, linear: nn.Linear, rank: int, world_size: int) -> None:
        super().__init__()
        cols = _shard(linear.in_features, world_size, rank, "in_features")
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReduceFromParallel.apply(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class TensorParallelMLP(nn.Module):
    """A bloomlib FeedForward (GELU / ReLU) split over the ranks: down(act(up(x))) with up column-parallel and
    down row-parallel. x: (B, T, d_model), the same on every rank -> (B, T, d_model), the same on every rank."""

    def __init__(self, ffn: FeedForward, rank: int, world_size: int) -> None:
        super().__init__()
        if ffn.kind == "swiglu":
            raise ValueError("TensorParallelMLP sketches a GELU/ReLU FeedForward, not ffn='swiglu'")
        self.kind = ffn.kind
        self.up = ColumnParallelLinear(ffn.up, rank, world_size)
        self.down = RowParallelLinear(ffn.down, rank, world_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        h = F.relu(h) if self.kind == "relu" else F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.down(h)


def _demo_case(d_model: int, seed: int):
    torch.manual_seed(seed)
    ffn = FeedForward(GPTConfig(d_model=d_model, n_head=1)).double()
    x = torch.randn(3, 4, d_model, dtype=torch.float64, requires_grad=True)
    return ffn, x, torch.randn(3, 4, d_model, dtype=torch.float64)


def _demo_worker(rank: int, world_size: int, folder: str, d_model: int, seed: int) -> None:
    ffn, x, grad = _demo_case(d_model, seed)
    tp = TensorParallelMLP(ffn, rank, world_size)
    y = tp(x)
    y.backward(grad)
    if rank == 0:
        save_file({"y": y.detach(), "x_grad": x.grad, "up": tp.up.weight.detach(), "down": tp.down.weight.detach()},
                  os.path.join(folder, "rank0.safetensors"))


def tensor_parallel_demo(world_size: int = 2, d_model: int = 32, seed: int = 0) -> dict:
    """Split one MLP over `world_size` CPU processes and compare with the unsplit MLP (float64). Returns rank 0's
    weight shapes next to the full ones, and the largest |difference| of the output and of the input gradient."""
    with tempfile.TemporaryDirectory() as folder:
        launch(_demo_worker, world_size, folder, d_model, seed)
        got = load_file(os.path.join(folder, "rank0.safetensors"))
    ffn, x, grad = _demo_case(d_model, seed)
    y = ffn(x)
    y.backward(grad)
    return {"up_shape": (tuple(ffn.up.weight.shape), tuple(got["up"].shape)),
            "down_shape": (tuple(ffn.down.weight.shape), tuple(got["down"].shape)),
            "output_diff": (got["y"] - y).abs().max().item(),
            "input_grad_diff": (got["x_grad"] - x.grad).abs().max().item()}


def main(argv: list[str] | None = None) -> int:
    """Run tensor_parallel_demo and print its result as one JSON object."""
    p = argparse.ArgumentParser(prog="bloomlib tp-demo", description=main.__doc__)
    p.add_argument("--world-size", type=int, default=2, help="CPU processes to split the MLP over (default 2)")
    p.add_argument("--d-model", type=int, default=32)
    args = p.parse_args(argv)
    if args.world_size < 1 or args.d_model < 1:
        p.error(f"--world-size and --d-model must be positive, got {args.world_size} and {args.d_model}")
    print(json.dumps(tensor_parallel_demo(args.world_size, args.d_model)))
    return 0
