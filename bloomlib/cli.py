"""The ``bloomlib`` console command: a thin dispatcher to each subcommand's module."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function). Each function takes argv (a list of strings) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("bloomlib.cli", "info_main", "device, versions, and whether Triton works here"),
    "train": ("bloomlib.training.train", "main", "train a GPT on the course corpus (see --help)"),
    "generate": ("bloomlib.cli", "generate_main", "generate text from a checkpoint"),
    "serve": ("bloomlib.serving.server", "main", "OpenAI-compatible server for a checkpoint"),
    "grade": ("bloomlib.course.grading", "main", "grade one exercise notebook"),
    "progress": ("bloomlib.course.progress", "main", "grade all your exercises: progress by Bloom level"),
    "tp-demo": ("bloomlib.training.distributed", "main", "one MLP split over N CPU processes (tensor parallel)"),
}
BENCHES: dict[str, tuple[str, str, str]] = {
    "core": ("bloomlib.training.bench", "main", "KV-cache speedup and training MFU"),
    "flash": ("bloomlib.kernels.bench", "main", "flash attention kernel vs plain attention"),
    "serve": ("bloomlib.serving.bench", "main", "batching, paged KV, speculative decoding, quantization"),
}


def info_main(argv: list[str] | None = None) -> int:
    """Print the device bloomlib will use, library versions, and whether Triton runs here."""
    import platform

    import torch

    from bloomlib.device import get_device

    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__}")
    print(f"device      {get_device()}")
    print(f"cuda        {torch.cuda.is_available()}")
    try:
        from bloomlib.kernels import triton_status

        print(f"triton      {triton_status()}")
    except ImportError:
        print("triton      bloomlib.kernels not available")
    return 0


def generate_main(argv: list[str] | None = None) -> int:
    """`bloomlib generate`: sample text from a checkpoint folder (default: the course model)."""
    import argparse

    import torch

    from bloomlib.checkpoint import load_checkpoint
    from bloomlib.model import COURSE_MODEL

    p = argparse.ArgumentParser(prog="bloomlib generate", description=generate_main.__doc__)
    p.add_argument("--checkpoint", default=str(COURSE_MODEL), help="checkpoint folder (default: the course model)")
    p.add_argument("--prompt", default="The ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.tokenizer is None:
        p.error(f"{args.checkpoint} has no tokenizer.json")
    model, tok = ckpt.model, ckpt.tokenizer
    idx = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_tokens=[tok.eos_id],
                         generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(out[0].tolist()))
    return 0


def _usage(table: dict[str, tuple[str, str, str]], prefix: str) -> str:
    width = max(len(k) for k in table)
    lines = [f"usage: {prefix} <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in table.items()]
    return "\n".join(lines)


def _dispatch(table: dict[str, tuple[str, str, str]], argv: list[str], prefix: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(table, prefix))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prefix}: unknown command {name!r}\n\n{_usage(table, prefix)}", file=sys.stderr)
        return 2
    module, func, _ = table[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return _dispatch(BENCHES, argv[1:], "bloomlib bench")
    table = dict(COMMANDS, bench=("", "", "benchmarks: " + ", ".join(BENCHES)))
    return _dispatch(table, argv, "bloomlib")


if __name__ == "__main__":
    sys.exit(main())
