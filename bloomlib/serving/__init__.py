"""The serving sketch: a nano-vllm-style engine for bloomlib's GPT.

block_manager (paged KV bookkeeping, prefix cache) -> kv_cache (the pages, behind the model's cache interface)
-> model_runner (the GPT's own blocks over that cache)
-> scheduler (continuous batching, preemption) -> engine (sampling, detokenizing, LLM.generate);
speculative (draft-and-verify decoding), quantization (INT8 / INT4 weight-only), router (replicas behind
round-robin or prefix-aware routing; a trace simulator), server (`bloomlib serve`, FastAPI, imported only there),
launch (ServerProcess: the server in its own process), bench (`bloomlib bench serve`).
"""
from bloomlib.serving.block_manager import BlockManager
from bloomlib.serving.config import EngineConfig
from bloomlib.serving.engine import LLM, CompletionOutput, LLMEngine
from bloomlib.serving.kv_cache import PagedKVCache
from bloomlib.serving.model_runner import ModelRunner
from bloomlib.serving.quantization import Int4Linear, Int8Linear, quantize_model, weight_bytes
from bloomlib.serving.router import Router, shared_prefix_workload, simulate_routing
from bloomlib.serving.scheduler import Scheduler
from bloomlib.serving.sequence import DEFAULT_BLOCKLIST, RequestOutput, SafetyFilter, SamplingParams, Sequence
from bloomlib.serving.speculative import SpeculativeDecoder, SpecStats

__all__ = ["BlockManager", "LLM", "CompletionOutput", "LLMEngine", "EngineConfig", "ModelRunner", "PagedKVCache",
           "Scheduler", "Int4Linear", "Int8Linear", "quantize_model", "weight_bytes", "Router",
           "shared_prefix_workload", "simulate_routing", "DEFAULT_BLOCKLIST", "RequestOutput", "SafetyFilter",
           "SamplingParams", "Sequence", "SpeculativeDecoder", "SpecStats"]
