"""Measurement tools for the Analyze and Evaluate lessons.

    linear_attention   Katharopoulos et al.'s kernel attention (memory linear in T) and the weights it implies
    streaming          StreamingLLM: RollingKVCache (attention sinks + recent window, behind the model's cache
                       interface), and per-token losses: streamed, dense, sliding window with recomputation
"""
from bloomlib.analysis.linear_attention import feature_map, linear_attention, linear_attention_weights
from bloomlib.analysis.streaming import RollingKVCache, dense_nll, sliding_recompute_nll, streaming_nll

__all__ = [
    "feature_map", "linear_attention", "linear_attention_weights",
    "RollingKVCache", "dense_nll", "sliding_recompute_nll", "streaming_nll",
]
