"""The serving sketch: a nano-vllm-style engine for bloomlib's GPT.

block_manager (paged KV bookkeeping, prefix cache) -> model_runner (paged attention over the GPT's weights)
-> scheduler (continuous batching, preemption) -> engine (sampling, detokenizing, LLM.generate);
speculative (draft-and-verify decoding), quantization (INT8 / INT4 weight-only), server (`bloomlib serve`,
FastAPI, imported only there), bench (`bloomlib bench serve`).
"""
from bloomlib.serving.block_manager import BlockManager
from bloomlib.serving.engine import LLM, CompletionOutput, LLMEngine
from bloomlib.serving.model_runner import ModelRunner, paged_attention
from bloomlib.serving.quantization import Int4Linear, Int8Linear, quantize_model, weight_bytes
from bloomlib.serving.scheduler import Scheduler
from bloomlib.serving.sequence import DEFAULT_BLOCKLIST, RequestOutput, SafetyFilter, SamplingParams, Sequence
from bloomlib.serving.speculative import SpeculativeDecoder, SpecStats

__all__ = ["BlockManager", "LLM", "CompletionOutput", "LLMEngine", "ModelRunner", "paged_attention", "Scheduler",
           "Int4Linear", "Int8Linear", "quantize_model", "weight_bytes", "DEFAULT_BLOCKLIST", "RequestOutput",
           "SafetyFilter", "SamplingParams", "Sequence", "SpeculativeDecoder", "SpecStats"]
