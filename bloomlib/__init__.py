"""bloomlib: the companion library of the Transformer course.

The step-by-step, GPU-ready transformer lives in attention / positional / blocks / model / encoder;
the Flash-style kernel in bloomlib.kernels; the serving sketch in bloomlib.serving.
"""
from bloomlib.attention import (AttentionSteps, KVCache, MultiHeadAttention, attention_steps,
                                build_attention_mask, causal_mask, scaled_dot_product_attention)
from bloomlib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from bloomlib.config import PRESETS, GPTConfig
from bloomlib.data import TASKS, get_batch, load_corpus, make_task, train_val_split
from bloomlib.device import autocast, get_device, seed_everything
from bloomlib.distributed import (ColumnParallelLinear, RowParallelLinear, TensorParallelMLP, init_distributed,
                                  launch, tensor_parallel_demo)
from bloomlib.encoder import Encoder, EncoderDecoder
from bloomlib.hf import export_gpt2, import_gpt2
from bloomlib.model import GPT, Transformer, count_parameters, flops_per_token, load_course_model
from bloomlib.positional import RotaryEmbedding, alibi_bias, alibi_slopes, sinusoidal_encoding
from bloomlib.pretrained import (MissingExtraError, load_bert, minilm, minilm_or_none, semantic_search,
                                 sentence_embeddings)
from bloomlib.quiz import Flashcards, Question, Quiz
from bloomlib.sampling import sample_next_token
from bloomlib.tokenizer import ByteBPETokenizer, CharTokenizer, load_tokenizer
from bloomlib.viz import head_view, inline_js_libraries, model_view, plot_attention
from bloomlib.variants import (AudioFrontend, BertInputs, PatchEmbedding, bert_inputs, mel_filterbank,
                               mel_spectrogram, patchify)

__version__ = "0.1.0"

__all__ = [
    "AttentionSteps", "KVCache", "MultiHeadAttention", "attention_steps", "build_attention_mask", "causal_mask",
    "scaled_dot_product_attention", "PRESETS", "GPTConfig", "autocast", "get_device", "seed_everything",
    "Encoder", "EncoderDecoder", "GPT", "Transformer", "count_parameters", "flops_per_token", "load_course_model",
    "RotaryEmbedding", "alibi_bias", "alibi_slopes", "sinusoidal_encoding", "sample_next_token",
    "Checkpoint", "load_checkpoint", "save_checkpoint", "TASKS", "get_batch", "load_corpus", "make_task",
    "train_val_split", "ByteBPETokenizer", "CharTokenizer", "load_tokenizer",
    "ColumnParallelLinear", "RowParallelLinear", "TensorParallelMLP", "init_distributed", "launch",
    "tensor_parallel_demo", "export_gpt2", "import_gpt2", "MissingExtraError", "load_bert", "minilm",
    "minilm_or_none", "semantic_search", "sentence_embeddings",
    "Flashcards", "Question", "Quiz", "head_view", "inline_js_libraries", "model_view", "plot_attention",
    "AudioFrontend", "BertInputs", "PatchEmbedding", "bert_inputs", "mel_filterbank", "mel_spectrogram", "patchify",
]
