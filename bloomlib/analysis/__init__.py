"""Measurement tools for the Analyze and Evaluate lessons.

    linear_attention   Katharopoulos et al.'s kernel attention (memory linear in T) and the weights it implies
    streaming          StreamingLLM: RollingKVCache (attention sinks + recent window, behind the model's cache
                       interface), and per-token losses: streamed, dense, sliding window with recomputation
    metrics            distinct-n and repeated n-grams, loss by position, sliding-window loss, attention-sink
                       shares and sink heads, and `measure` (best wall time, peak memory of a call)

For the Evaluate lesson, used as modules (`from bloomlib.analysis import scaling`):
    scaling            Chinchilla's L(N, D), the compute-optimal split, Hoffmann et al.'s Huber fit with bootstrap
                       intervals, IsoFLOP curves, training cost, the lesson-05 ladder's table
    heads              attention entropy per head (normalized by an even spread), head labels, attention weights
    emergence          addition accuracy (exact match, per digit), prefix-matching and previous-token scores,
                       the in-context score, the phase change of a loss curve
    kv_profile         the serving engine's KV cache measured: bytes per token, prefix sharing, memory pressure,
                       a live server's /metrics
"""
from bloomlib.analysis.linear_attention import feature_map, linear_attention, linear_attention_weights
from bloomlib.analysis.metrics import (Measurement, attention_sink_share, distinct_n, loss_by_position, measure,
                                       repeated_ngram_rate, sink_heads, sliding_window_loss)
from bloomlib.analysis.streaming import RollingKVCache, dense_nll, sliding_recompute_nll, streaming_nll

__all__ = [
    "feature_map", "linear_attention", "linear_attention_weights",
    "Measurement", "attention_sink_share", "distinct_n", "loss_by_position", "measure", "repeated_ngram_rate",
    "sink_heads", "sliding_window_loss",
    "RollingKVCache", "dense_nll", "sliding_recompute_nll", "streaming_nll",
]
