"""bloomlib: the companion library of the Transformer course.

The step-by-step, GPU-ready transformer is the package root (config, masks, attention, positional, blocks,
model, encoder, sampling, tokenizer, variants, checkpoint, device) and is what `import bloomlib` exports.
The parts around it are subpackages: bloomlib.kernels (the Flash-style attention kernel), bloomlib.serving
(the serving engine and server), bloomlib.training (data, training loop, distributed, `bench core`),
bloomlib.interop (Hugging Face export/import, the pretrained MiniLM), bloomlib.course (quizzes, attention
views, the grader).
"""
from bloomlib.attention import (AttentionSteps, KVCache, MultiHeadAttention, attention_steps,
                                scaled_dot_product_attention, set_attention_backend)
from bloomlib.checkpoint import Checkpoint, load_checkpoint, load_course_model, save_checkpoint
from bloomlib.config import PRESETS, GPTConfig
from bloomlib.device import autocast, get_device, seed_everything
from bloomlib.encoder import Encoder, EncoderDecoder
from bloomlib.masks import build_attention_mask, causal_mask, visible
from bloomlib.model import GPT, Transformer, count_parameters, flops_per_token
from bloomlib.positional import RotaryEmbedding, alibi_bias, alibi_slopes, sinusoidal_encoding
from bloomlib.sampling import sample_next_token
from bloomlib.tokenizer import ByteBPETokenizer, CharTokenizer, load_tokenizer
from bloomlib.variants import (AudioFrontend, BertInputs, PatchEmbedding, bert_inputs, mel_filterbank,
                               mel_spectrogram, patchify)

__version__ = "0.1.0"

__all__ = [
    "AttentionSteps", "KVCache", "MultiHeadAttention", "attention_steps", "scaled_dot_product_attention",
    "set_attention_backend",
    "Checkpoint", "load_checkpoint", "save_checkpoint", "PRESETS", "GPTConfig", "autocast", "get_device",
    "seed_everything", "Encoder", "EncoderDecoder", "build_attention_mask", "causal_mask", "visible",
    "GPT", "Transformer", "count_parameters", "flops_per_token", "load_course_model",
    "RotaryEmbedding", "alibi_bias", "alibi_slopes", "sinusoidal_encoding", "sample_next_token",
    "ByteBPETokenizer", "CharTokenizer", "load_tokenizer",
    "AudioFrontend", "BertInputs", "PatchEmbedding", "bert_inputs", "mel_filterbank", "mel_spectrogram", "patchify",
]
