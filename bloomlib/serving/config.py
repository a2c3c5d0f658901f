"""EngineConfig: the serving engine's runtime settings, shared by LLMEngine, `bloomlib serve`, the benchmark and
the lessons. None of this is part of what a model is: the same checkpoint serves with any of them."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class EngineConfig:
    """kv_block_size:          tokens per KV-cache page (the model's context window is `GPTConfig.block_size`).
    num_kv_blocks:          pages in the KV pool; None = room for max_num_seqs full contexts.
    max_num_seqs:           sequences running together at most.
    max_num_batched_tokens: new tokens per engine step at most (raised to the context window if smaller, so
                            that any admissible prompt can be prefilled).
    enable_prefix_caching:  reuse the KV pages of a prompt prefix seen before.
    """

    kv_block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "enable_prefix_caching":
                if not isinstance(value, bool):
                    raise ValueError(f"EngineConfig.enable_prefix_caching must be a bool, got {value!r}")
            elif value is not None or f.name != "num_kv_blocks":
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ValueError(f"EngineConfig.{f.name} must be a positive integer, got {value!r}")
