"""The ``bloomlib`` console command: a thin dispatcher to each subcommand's module."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function). Each function takes argv (a list of strings) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("bloomlib.cli", "info_main", "device, versions, and whether Triton works here"),
    "train": ("bloomlib.training.train", "main", "train a GPT on the course corpus (see --help)"),
    "generate": ("bloomlib.model", "generate_main", "generate text from a checkpoint"),
    "serve": ("bloomlib.serving.server", "main", "OpenAI-compatible server for a checkpoint"),
    "grade": ("bloomlib.course.grading", "main", "grade one exercise notebook"),
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
