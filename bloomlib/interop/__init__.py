"""Interop with Hugging Face: GPT-2 layout export/import, and the pretrained all-MiniLM-L6-v2 in bloomlib's Encoder."""
from bloomlib.interop.hf import export_gpt2, import_gpt2
from bloomlib.interop.pretrained import (MissingExtraError, load_bert, minilm, minilm_or_none, semantic_search,
                                         sentence_embeddings)

__all__ = ["export_gpt2", "import_gpt2", "MissingExtraError", "load_bert", "minilm", "minilm_or_none",
           "semantic_search", "sentence_embeddings"]
