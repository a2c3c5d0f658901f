"""Sentence classification on an encoder: a head over pooled hidden states, a short fine-tuning loop, accuracy.

Lesson 03 fine-tunes a pretrained encoder (all-MiniLM-L6-v2 in bloomlib's `Encoder`) and a from-scratch one on
the same few sentences, with the same steps:

    clf = SentenceClassifier(encoder, n_classes=3)
    losses = finetune(clf, ids, mask, labels, steps=30, batch_size=12, lr=1e-4, generator=gen)
    accuracy(clf, test_ids, test_mask, test_labels)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.encoder import masked_mean

POOLINGS = ("mean", "cls")


class SentenceClassifier(nn.Module):
    """An encoder ((B, T) ids, (B, T) mask -> (B, T, d_model)) and a linear head on one vector per sentence:
    the mean of the hidden states over real tokens (pooling "mean", sentence-transformers' recipe) or the
    hidden state at position 0, [CLS] (pooling "cls"). forward: ids (B, T), mask (B, T) 1/0 -> logits (B, n_classes).
    """

    def __init__(self, encoder: nn.Module, n_classes: int, pooling: str = "mean") -> None:
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        d_model = getattr(getattr(encoder, "config", None), "d_model", None)
        if not isinstance(d_model, int):
            raise ValueError("encoder must have a config.d_model (a bloomlib Encoder)")
        self.encoder, self.pooling = encoder, pooling
        self.head = nn.Linear(d_model, n_classes)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, d_model), mask (B, T) -> (B, d_model)."""
        return hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must both be (B, T), got {tuple(ids.shape)} and {tuple(mask.shape)}")
        return self.head(self.pool(self.encoder(ids, mask), mask))


def _check_data(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
    if ids.dim() != 2 or mask.shape != ids.shape or labels.shape != ids.shape[:1]:
        raise ValueError(f"ids, mask must be (N, T) and labels (N,), got {tuple(ids.shape)}, {tuple(mask.shape)}, "
                         f"{tuple(labels.shape)}")


def finetune(model: SentenceClassifier, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, *, steps: int,
             batch_size: int, lr: float, generator: torch.Generator | None = None,
             grad_clip: float = 1.0) -> list[float]:
    """`steps` AdamW steps on the cross-entropy of random batches of `batch_size` rows (drawn with `generator`),
    gradients clipped to norm `grad_clip`; every parameter of `model` trains. ids, mask: (N, T); labels: (N,).
    Returns the losses (floats), one per step; leaves the model in eval mode."""
    _check_data(ids, mask, labels)
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(ids), (batch_size,), generator=generator)
        logits = model(ids[rows].to(device), mask[rows].to(device))
        loss = F.cross_entropy(logits, labels[rows].to(device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: SentenceClassifier, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 256) -> float:
    """The share of rows whose argmax logit is the label (eval mode, no gradients)."""
    _check_data(ids, mask, labels)
    device = next(model.parameters()).device
    model.eval()
    right = 0
    for i in range(0, len(ids), batch_size):
        logits = model(ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device))
        right += int((logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    return right / len(ids)


# ------------------------------------------------------------------------------------------------ the data
TOPICS = {
    "food": (["soup", "bread", "salad", "pasta"], ["curry", "pancakes", "stew", "noodles", "omelette", "dumplings"]),
    "sport": (["football match", "tennis final", "marathon", "swimming race"],
              ["basketball game", "cycling race", "boxing match", "rugby final", "ski jump", "volleyball game"]),
    "computers": (["laptop", "database", "compiler", "keyboard"],
                  ["server", "spreadsheet", "router", "operating system", "printer", "hard drive"]),
}
OPENERS = ["We talked about the", "She wrote a review of the", "Nobody expected the", "I read a story about the",
           "They argued about the", "He was excited about the"]


def topic_sentences(split: str) -> tuple[list[str], list[int], list[str]]:
    """Short sentences about three topics, built from templates (nothing downloaded): (sentences, labels, topic
    names). "train": 4 nouns per topic x 2 openers = 24 sentences; "test": 6 other nouns per topic x the 4 other
    openers = 72 sentences. The two splits share no noun and no opener, so only what a word means links them."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    openers = OPENERS[:2] if split == "train" else OPENERS[2:]
    sentences, labels = [], []
    for label, (train_nouns, test_nouns) in enumerate(TOPICS.values()):
        for noun in train_nouns if split == "train" else test_nouns:
            for opener in openers:
                sentences.append(f"{opener} {noun}.")
                labels.append(label)
    return sentences, labels, list(TOPICS)
