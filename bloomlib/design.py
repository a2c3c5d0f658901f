"""Design tools for lesson 06 (Create): which variant fits a task, what speculative decoding and quantization buy
on this machine against what theory predicts, and whether a serving plan fits in memory.

    choose_variant(task)                          the architecture for a task in plain words (keyword rules)
    expected_tokens_per_pass(alpha, gamma)        Leviathan et al.'s (1 - alpha^(gamma+1)) / (1 - alpha)
    speculative_sweep(target, draft, prompts)     measured acceptance, tokens per pass, draft cost and speedup per gamma
    quantization_table(model, val_ids)            fp / int8 / int4 weight bytes and validation loss (shared with
                                                  `bloomlib bench serve`)
    Workload, plan(config, workload)              weight bytes, KV bytes per token (GQA-aware), concurrency by
                                                  Little's law, and whether it all fits the memory
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from bloomlib.analysis._lm import check_int
from bloomlib.config import GPTConfig
from bloomlib.serving.bench import decode_pass_ms, quantization_table, time_plain, time_speculative
from bloomlib.serving.speculative import SpeculativeDecoder

__all__ = ["Choice", "choose_variant", "expected_tokens_per_pass", "speculative_sweep", "quantization_table",
           "parameter_count", "weight_bytes_for", "kv_bytes_per_token", "Workload", "Plan", "plan"]


# --- which variant ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    variant: str                 # "decoder-only", "encoder-only", "encoder-decoder", "vit" or "clip"
    examples: tuple[str, ...]    # models of that kind
    reason: str


# Word stems: a task word matches a stem it starts with ("summar" matches summarise, summarize, summary).
_AUDIO = ("speech", "audio", "spoken", "voice", "transcrib", "transcription", "subtitl", "podcast", "asr")  # a transcript is text
_IMAGE = ("image", "photo", "picture", "pixel", "visual", "vision", "video", "camera")
_CAPTION = ("caption", "describ", "alt-text")
_MAKE = ("generat", "draw", "paint", "synthes", "render")
_IMAGE_SEARCH = ("search", "retriev", "find", "match", "query", "queries", "similar", "zero-shot")
_IMAGE_TEXT = ("text", "sentence", "word", "language", "prompt", "descript", "typed")
_SEQ2SEQ = ("translat", "summar", "paraphras", "rewrit")
_UNDERSTAND = ("search", "retriev", "embed", "similar", "cluster", "classif", "categor", "sentiment", "rank",
               "dedup", "duplicat", "tag", "entit", "spam", "intent", "extract", "detect")
_GENERATE = ("generat", "writ", "chat", "complet", "continu", "code", "story", "stories", "assistant", "dialog",
             "answer", "reply", "respond")

_KINDS = {
    "decoder-only": (("GPT-2", "Llama", "Mistral"), "the output continues the input token by token: one causal "
                     "decoder reads the prompt and writes the answer"),
    "encoder-only": (("E5", "BERT", "all-MiniLM-L6-v2"), "the output is a label or a vector, not new text: a "
                     "bidirectional encoder sees the whole input at once (E5-style embeddings for search)"),
    "encoder-decoder": (("T5", "BART", "MarianMT"), "a whole input is rewritten into a new sequence of another "
                        "length: the encoder reads it all, the decoder writes while cross-attending to it"),
    "vit": (("ViT", "DeiT"), "pixels in, a label or a vector out: image patches are the tokens of an encoder"),
    "clip": (("CLIP", "SigLIP"), "images and text must meet in one embedding space: an image encoder and a text "
             "encoder trained contrastively, so that a sentence can find a photo"),
}
_SPEECH = Choice("encoder-decoder", ("Whisper",), "speech in, text out: an encoder reads the whole mel spectrogram, "
                 "a decoder writes the transcript (or its translation)")
_CAPTIONING = Choice("encoder-decoder", ("BLIP", "ViT + GPT-2 (VisionEncoderDecoder)"), "image in, new text out: "
                     "a ViT encoder reads the image, a text decoder writes the caption while cross-attending to it")
KNOWN_TASKS = ("text or code generation, chat", "search, embeddings, classification", "translation, summarisation",
               "speech transcription", "image classification", "image-text search (images and text in one space)",
               "image captioning")


def choose_variant(task: str) -> Choice:
    """The architecture for a task described in plain words. Rules, in order (the first that matches wins):
    speech -> Whisper (encoder-decoder); image + search/find/match/query -> CLIP; image + caption/describe ->
    ViT encoder + text decoder; image + generate/draw -> ValueError (image generation is diffusion's job, not
    one of these); image + text/sentence/description -> CLIP; image -> ViT; translate/summarise/paraphrase/
    rewrite -> encoder-decoder; search/embed/classify/detect/extract... -> encoder-only; generate/write/chat/
    complete/code/answer... -> decoder-only. So "code search" is encoder-only (search is tested before code)
    and "write a summary" encoder-decoder. No rule matches: ValueError listing the known kinds."""
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"task must be a non-empty description, got {task!r}")
    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", task.lower())

    def has(stems: tuple[str, ...]) -> bool:
        return any(w.startswith(stems) for w in words)

    if has(_AUDIO):
        return _SPEECH
    if has(_IMAGE):
        if has(_IMAGE_SEARCH):
            return _choice("clip")
        if has(_CAPTION):
            return _CAPTIONING
        if has(_MAKE):
            raise ValueError(f"task {task!r}: generating images is a diffusion model's job, not one of these "
                             f"variants; known kinds: {', '.join(KNOWN_TASKS)}")
        return _choice("clip" if has(_IMAGE_TEXT) else "vit")
    for stems, variant in ((_SEQ2SEQ, "encoder-decoder"), (_UNDERSTAND, "encoder-only"), (_GENERATE, "decoder-only")):
        if has(stems):
            return _choice(variant)
    raise ValueError(f"task {task!r} matches no rule; describe it as one of: {', '.join(KNOWN_TASKS)}")


def _choice(variant: str) -> Choice:
    return Choice(variant, *_KINDS[variant])


# --- speculative decoding against Leviathan et al. 2023 -----------------------------------------------------------

def expected_tokens_per_pass(alpha: float, gamma: int, max_tokens: int | None = None) -> float:
    """Tokens per target pass when each of the gamma draft tokens is kept independently with probability alpha.

    max_tokens None: the paper's stream, E = 1 + alpha + ... + alpha^gamma = (1 - alpha^(gamma+1)) / (1 - alpha).
    max_tokens an int: requests of max_tokens tokens as SpeculativeDecoder runs them (a pass drafts
    min(gamma, tokens still to go), and what the last pass makes beyond max_tokens is dropped):
    max_tokens / E[passes per request], the limit of total tokens / total passes over many requests."""
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the acceptance rate) must be a number in [0, 1], got {alpha!r}")
    check_int("gamma", gamma, 0)
    if max_tokens is None:
        return float(gamma + 1) if alpha == 1.0 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    check_int("max_tokens", max_tokens, 1)
    passes = [0.0] * (max_tokens + 1)  # passes[r]: expected passes to make r more tokens
    for r in range(1, max_tokens + 1):
        g = min(gamma, r)
        # a pass makes j tokens: j - 1 kept drafts then a rejection (j <= g), or all g kept plus the bonus token
        p = [alpha ** (j - 1) * (1 - alpha) for j in range(1, g + 1)] + [alpha ** g]
        passes[r] = 1.0 + sum(pj * passes[max(r - j, 0)] for j, pj in enumerate(p, start=1))
    return max_tokens / passes[max_tokens]


def speculative_sweep(target, draft, prompts, gammas=(1, 2, 4, 6), *, max_tokens: int = 48,
                      temperature: float = 0.0, seed: int = 0) -> list[dict]:
    """One row per gamma (SpeculativeDecoder's k), every prompt (a list of token ids) generated to max_tokens
    (EOS ignored; prompt i sampled with seed + i), against the same prompts decoded plainly by the engine:

    alpha                  SpecStats.acceptance_rate: kept / judged drafts (drafts after a rejection go unjudged,
                           so kept / proposed would understate the paper's alpha)
    tokens_per_pass        generated tokens / target passes, measured (its theory: ..._finite below)
    expected_tokens_per_pass, expected_tokens_per_pass_finite   at the measured alpha: the paper's stream, and
                           requests of max_tokens (expected_tokens_per_pass(alpha, gamma, max_tokens))
    draft_cost             c: one draft decode pass / one target decode pass, timed here (decode_pass_ms)
    expected_speedup       expected_tokens_per_pass / (gamma * c + 1), Leviathan et al.'s wall-time improvement
    speedup                plain wall time / speculative wall time, measured
    identical_to_plain     prompts whose completion equals plain decoding's (all of them at temperature 0)
    and wall_time_speculative_s, wall_time_plain_s, target_passes, generated, gamma, temperature."""
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(
            isinstance(p, (list, tuple)) and p and all(isinstance(t, int) for t in p) for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids")
    if not isinstance(gammas, (list, tuple)) or not gammas:
        raise ValueError(f"gammas must be a non-empty sequence of positive ints, got {gammas!r}")
    for i, g in enumerate(gammas):
        check_int(f"gammas[{i}]", g, 1)
    check_int("max_tokens", max_tokens, 1)
    check_int("seed", seed, 0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    probe = SpeculativeDecoder(target, draft, k=1)
    time_speculative(probe, prompts[:1], temperature, max_tokens, seed)  # warm-up: first-call costs stay out
    # best of 3: a timing is disturbed upwards only (by other work on the machine), so the minimum is the estimate
    c = (min(decode_pass_ms(probe.draft, probe.table) for _ in range(3))
         / min(decode_pass_ms(probe.target, probe.table) for _ in range(3)))
    t_plain, plain = min((time_plain(target, prompts, temperature, max_tokens, seed) for _ in range(2)),
                         key=lambda r: r[0])
    rows = []
    for g in gammas:
        spec = SpeculativeDecoder(target, draft, k=g)
        t_spec, out = time_speculative(spec, prompts, temperature, max_tokens, seed)
        s = spec.stats
        expected = expected_tokens_per_pass(s.acceptance_rate, g)
        rows.append({"gamma": g, "temperature": temperature, "alpha": s.acceptance_rate,
                     "tokens_per_pass": s.generated / s.target_passes, "expected_tokens_per_pass": expected,
                     "expected_tokens_per_pass_finite": expected_tokens_per_pass(s.acceptance_rate, g, max_tokens),
                     "draft_cost": c, "expected_speedup": expected / (g * c + 1), "speedup": t_plain / t_spec,
                     "identical_to_plain": sum(a == b for a, b in zip(out, plain)),
                     "wall_time_speculative_s": t_spec, "wall_time_plain_s": t_plain,
                     "target_passes": s.target_passes, "generated": s.generated})
    return rows


# --- capacity (quantization_table is bloomlib.serving.bench's) ----------------------------------------------------

def parameter_count(config: GPTConfig) -> int:
    """Parameters of bloomlib's decoder-only GPT with this config, from its shapes (no model built): embeddings,
    per block norm + attention (q and o: d x d; k and v: d x n_kv_head * head_dim) + norm + FFN, final norm, and
    the head unless tied. The lesson's 12 L d^2 is the MHA, 4d-GELU special case of the blocks' term."""
    d, f, kv, b = config.d_model, config.d_ff, config.n_kv_head * config.head_dim, int(config.bias)
    norm = d * (2 if config.norm == "layernorm" and config.bias else 1)
    attn = 2 * d * d + 2 * d * kv + b * (2 * d + 2 * kv)  # fused or not, q, k, v, o hold these
    ffn = 0
    if config.ffn != "none":
        n_in = 2 if config.ffn == "swiglu" else 1          # up (and gate): d -> d_ff; down: d_ff -> d
        ffn = norm + (n_in + 1) * d * f + b * (n_in * f + d)
    embed = (config.vocab_size + config.type_vocab_size) * d
    if config.pos_encoding == "learned":
        embed += config.block_size * d
    head = 0 if config.tie_weights else config.vocab_size * d
    norms = norm * (int(config.embed_norm) + int(config.final_norm))
    return embed + norms + config.n_layer * (norm + attn + ffn) + head


def weight_bytes_for(config: GPTConfig, bits_per_weight: float = 16) -> int:
    """Bytes of every parameter at bits_per_weight (16: fp16 / bf16; 8; 4, or 4.5 to count int4's group scales)."""
    if not isinstance(bits_per_weight, (int, float)) or isinstance(bits_per_weight, bool) or bits_per_weight <= 0:
        raise ValueError(f"bits_per_weight must be a positive number, got {bits_per_weight!r}")
    return math.ceil(parameter_count(config) * bits_per_weight / 8)


def kv_bytes_per_token(config: GPTConfig, kv_dtype: torch.dtype = torch.float16) -> int:
    """2 (K and V) x n_layer x n_kv_head x head_dim x bytes per element: GQA caches n_kv_head heads, not n_head."""
    if not isinstance(kv_dtype, torch.dtype):
        raise ValueError(f"kv_dtype must be a torch.dtype, got {kv_dtype!r}")
    return 2 * config.n_layer * config.n_kv_head * config.head_dim * kv_dtype.itemsize


@dataclass(frozen=True)
class Workload:
    """requests_per_s arriving, each with prompt_tokens in and output_tokens out, each spending latency_target_s
    in the system (Little's law's W), served from memory_bytes of accelerator memory (weights + KV cache)."""
    requests_per_s: float
    prompt_tokens: int
    output_tokens: int
    latency_target_s: float
    memory_bytes: int

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "latency_target_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"Workload.{name} must be a positive number, got {value!r}")
        for name in ("prompt_tokens", "output_tokens", "memory_bytes"):
            check_int(f"Workload.{name}", getattr(self, name), 1)


@dataclass(frozen=True)
class Plan:
    parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    tokens_per_sequence: int      # prompt + output: what one sequence holds in the cache at its end
    kv_bytes_per_sequence: int
    max_concurrent: int           # sequences whose full KV fits in the memory left after the weights
    concurrent_needed: int        # Little's law: ceil(requests_per_s x latency_target_s)
    kv_tokens_in_flight: int      # concurrent_needed x tokens_per_sequence (every sequence at its longest)
    memory_needed: int            # weights + concurrent_needed sequences' KV
    output_tokens_per_s: float    # the throughput the workload asks for
    fits: bool


def plan(config: GPTConfig, workload: Workload, *, bits_per_weight: float = 16,
         kv_dtype: torch.dtype = torch.float16) -> Plan:
    """Does the workload fit? Conservative: every sequence in flight is counted at its full prompt + output length
    (no sliding-window cap), and only weights and KV cache take memory (no activations, no partly filled pages)."""
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be a Workload, got {type(workload).__name__}")
    tokens = workload.prompt_tokens + workload.output_tokens
    if tokens > config.block_size:
        raise ValueError(f"workload: prompt_tokens + output_tokens = {tokens} exceed the model's context window "
                         f"(block_size={config.block_size})")
    weights, per_token = weight_bytes_for(config, bits_per_weight), kv_bytes_per_token(config, kv_dtype)
    per_seq = per_token * tokens
    # rounded first: 0.1 requests/s x 30 s is 3.0000000000000004 in floats, and 3 sequences in flight
    needed = math.ceil(round(workload.requests_per_s * workload.latency_target_s, 9))
    memory_needed = weights + needed * per_seq
    return Plan(parameters=parameter_count(config), weight_bytes=weights, kv_bytes_per_token=per_token,
                tokens_per_sequence=tokens, kv_bytes_per_sequence=per_seq,
                max_concurrent=max(0, (workload.memory_bytes - weights) // per_seq), concurrent_needed=needed,
                kv_tokens_in_flight=needed * tokens, memory_needed=memory_needed,
                output_tokens_per_s=workload.requests_per_s * workload.output_tokens,
                fits=memory_needed <= workload.memory_bytes)
