"""Model configuration: one dataclass for every model the course builds, plus named presets.

Every knob a real checkpoint needs (post-LN, token types, norm eps, exact or tanh GELU, biases)
is here, so that the same blocks can load BERT or GPT-2 weights later.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

POS_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
FFNS = ("gelu", "gelu_tanh", "relu", "swiglu", "none")
RUNTIME_FIELDS = ("attn_backend",)  # once saved in config.json; how a model runs is not what it is


@dataclass
class GPTConfig:
    """Shape and flavour of a transformer. Used by GPT, Encoder and EncoderDecoder.

    vocab_size:   number of token ids.
    block_size:   the context window: the longest input (in tokens) the model accepts.
    n_layer:      number of transformer blocks (for EncoderDecoder: in the encoder and in the decoder).
    n_head:       query heads per attention layer; must divide d_model.
    n_kv_head:    key/value heads (GQA); None means n_head (MHA); 1 is MQA. Must divide n_head.
    d_model:      width of the residual stream.
    d_ff:         hidden width of the FFN; None means 4 * d_model (8/3 * d_model rounded for SwiGLU); unused by "none".
    pos_encoding: "learned", "sinusoidal", "rope", "alibi" or "none".
    norm:         "layernorm" or "rmsnorm"; norm_eps its epsilon.
    ffn:          "gelu" (exact), "gelu_tanh", "relu", "swiglu", or "none": attention-only blocks (no FFN sublayer
                  and no norm before it), the models of Elhage et al. 2021 and Olsson et al. 2022.
    prenorm:      True for pre-LN blocks (x + f(norm(x))), False for post-LN (norm(x + f(x))).
    bias:         biases in Linear layers (and LayerNorm).
    sliding_window: if set, position i attends only positions j with i - w < j <= i.
    causal:       decoder-style masking (False for encoders).
    type_vocab_size: number of token types (BERT's segment embeddings); 0 for none.
    embed_norm:   a norm right after the embeddings (BERT); final_norm: one before the head (GPT-2 pre-LN).
    tie_weights:  share the token embedding with the output projection.
    n_classes:    size of the Encoder's classification head (0: no head).
    """

    vocab_size: int = 512
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    d_ff: int | None = None
    dropout: float = 0.0
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    ffn: str = "gelu"
    prenorm: bool = True
    bias: bool = True
    sliding_window: int | None = None
    causal: bool = True
    type_vocab_size: int = 0
    embed_norm: bool = False
    final_norm: bool = True
    tie_weights: bool = True
    n_classes: int = 0

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.ffn != "swiglu" else 64 * ((8 * self.d_model // 3 + 63) // 64)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: n_head={self.n_head} must divide d_model={self.d_model}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        for name, allowed in (("pos_encoding", POS_ENCODINGS), ("norm", NORMS), ("ffn", FFNS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: RoPE needs an even head_dim, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"GPTConfig.sliding_window must be positive or None, got {self.sliding_window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        # Older checkpoints saved the attention backend, a runtime choice (see GPT.set_attention_backend): ignore it.
        d = {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named configuration (see PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # the course model: trained on the pydoc corpus with the byte-level BPE tokenizer (bloomlib/assets/course_model)
    "course": dict(vocab_size=512, block_size=256, n_layer=4, n_head=4, d_model=128),
    # its speculative-decoding draft: same tokenizer, far smaller
    "draft": dict(vocab_size=512, block_size=256, n_layer=1, n_head=2, d_model=64),
    # for tests and quick demos
    "tiny": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=32),
    # the shapes of real models (for counting parameters and FLOPs, not for training here)
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768, ffn="gelu_tanh"),
    "bert-base": dict(vocab_size=30522, block_size=512, n_layer=12, n_head=12, d_model=768, causal=False,
                      prenorm=False, type_vocab_size=2, embed_norm=True, final_norm=False, norm_eps=1e-12),
    "llama-7b": dict(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, d_model=4096, d_ff=11008,
                     pos_encoding="rope", norm="rmsnorm", norm_eps=1e-6, ffn="swiglu", bias=False, tie_weights=False),
    "mistral-7b": dict(vocab_size=32000, block_size=32768, n_layer=32, n_head=32, n_kv_head=8, d_model=4096,
                       d_ff=14336, pos_encoding="rope", norm="rmsnorm", norm_eps=1e-5, ffn="swiglu", bias=False,
                       tie_weights=False, sliding_window=4096),
}
