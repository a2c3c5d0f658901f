"""bloomlib.training.finetune: the sentence classifier's pooling against NumPy's weighted average, the loop's
training (every weight moves, the loss falls, a separable task is learned), accuracy against NumPy, the data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bloomlib import Encoder, GPTConfig
from bloomlib.training.finetune import SentenceClassifier, accuracy, finetune, topic_sentences


def _encoder(vocab=20, block=8) -> Encoder:
    torch.manual_seed(0)
    return Encoder(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, d_model=16, causal=False))


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (5, 8), generator=g)
    mask = torch.ones(5, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    return ids, mask


def test_mean_pooling_is_the_average_over_real_tokens():
    clf = SentenceClassifier(_encoder(), n_classes=3).eval()
    ids, mask = _batch()
    with torch.no_grad():
        hidden = clf.encoder(ids, mask)
        pooled = clf.pool(hidden, mask)
        logits = clf(ids, mask)
    want = np.stack([np.average(hidden[b].double().numpy(), axis=0, weights=mask[b].numpy()) for b in range(5)])
    np.testing.assert_allclose(pooled.double().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(logits.double().numpy(),
                               want @ clf.head.weight.double().detach().numpy().T + clf.head.bias.double().detach().numpy(),
                               atol=1e-5)
    assert logits.shape == (5, 3)


def test_cls_pooling_reads_position_0():
    clf = SentenceClassifier(_encoder(), n_classes=2, pooling="cls").eval()
    ids, mask = _batch()
    with torch.no_grad():
        hidden = clf.encoder(ids, mask)
        assert torch.equal(clf.pool(hidden, mask), hidden[:, 0])


@pytest.mark.parametrize("kwargs, match", [(dict(n_classes=1), "n_classes must be an int >= 2"),
                                           (dict(n_classes=True), "n_classes must be an int >= 2"),
                                           (dict(n_classes=2, pooling="max"), "pooling must be one of")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SentenceClassifier(_encoder(), **kwargs)


def test_bad_shapes_are_named():
    clf = SentenceClassifier(_encoder(), n_classes=2)
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"ids and mask must both be \(B, T\)"):
        clf(ids, mask[:, :4])
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        finetune(clf, ids, mask, torch.zeros(4, dtype=torch.long), steps=1, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
        finetune(clf, ids, mask, torch.zeros(5, dtype=torch.long), steps=0, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        topic_sentences("dev")


def test_finetune_learns_a_separable_task_and_trains_every_weight():
    """Label = whether token 3 occurs in the row: every weight moves, the loss falls, held-out accuracy is high."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 20, (300, 8), generator=g)
    labels = torch.randint(0, 2, (300,), generator=g)
    ids[labels == 1, torch.randint(0, 8, (int(labels.sum()),), generator=g)] = 3
    mask = torch.ones_like(ids)
    clf = SentenceClassifier(_encoder(), n_classes=2)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    losses = finetune(clf, ids[:200], mask[:200], labels[:200], steps=150, batch_size=32, lr=3e-3,
                      generator=torch.Generator().manual_seed(0))
    assert len(losses) == 150 and all(type(l) is float for l in losses) and not clf.training
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    moved = {n for n, p in clf.named_parameters() if not torch.equal(p, before[n])}
    unused = ("encoder.mlm_", "encoder.pooler")  # the MLM head and the [CLS] pooler take no part in mean pooling
    assert moved == {n for n, _ in clf.named_parameters() if not n.startswith(unused)}
    acc = accuracy(clf, ids[200:], mask[200:], labels[200:], batch_size=7)  # batches of 7: the last one is short
    with torch.no_grad():
        want = float(np.mean(clf(ids[200:], mask[200:]).argmax(-1).numpy() == labels[200:].numpy()))
    assert acc == pytest.approx(want) and acc > 0.9


def test_topic_sentences_share_no_noun_or_opener():
    train, y_train, topics = topic_sentences("train")
    test, y_test, _ = topic_sentences("test")
    assert (len(train), len(test), topics) == (24, 72, ["food", "sport", "computers"])
    assert np.bincount(y_train).tolist() == [8, 8, 8] and np.bincount(y_test).tolist() == [24, 24, 24]
    split = lambda s: s.removesuffix(".").split(" the ")  # noqa: E731
    assert not {split(s)[1] for s in train} & {split(s)[1] for s in test}
    assert not {split(s)[0] for s in train} & {split(s)[0] for s in test}
    assert topic_sentences("train") == (train, y_train, topics)  # no randomness
