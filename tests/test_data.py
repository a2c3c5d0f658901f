"""Corpus, batching and synthetic tasks; task answers are recomputed here with plain Python."""
import sys

import pytest
import torch
import torch.nn.functional as F

from bloomlib.training.data import (ADDITION_CHARS, IGNORE, TASKS, batches, get_batch, load_corpus, make_task,
                           train_val_split)


def test_corpus_is_pydoc_topics_in_sorted_order():
    from pydoc_data.topics import topics

    text = load_corpus()
    assert text == load_corpus() and len(text) > 100_000
    pos = 0
    for key in sorted(topics):
        found = text.index(topics[key], pos)
        assert found == pos  # each topic starts where the previous one (plus its separator) ends
        pos = found + len(topics[key]) + 2
    assert pos - 2 == len(text)


def test_corpus_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pydoc_data.topics"):
        load_corpus()


def test_train_val_split():
    ids = list(range(1000))
    train, val = train_val_split(ids, 0.1)
    assert train.dtype == torch.long and len(train) == 900 and len(val) == 100
    assert torch.cat([train, val]).tolist() == ids
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(ids, bad)
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(torch.zeros(3, 3, dtype=torch.long))


def test_get_batch_windows_and_shift():
    data = torch.randint(1000, (500,), generator=torch.Generator().manual_seed(0))
    x, y = get_batch(data, 16, 32, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.long
    rows = data.tolist()
    for xb, yb in zip(x.tolist(), y.tolist()):
        starts = [s for s in range(len(rows) - 32) if rows[s:s + 32] == xb]
        assert any(rows[s + 1:s + 33] == yb for s in starts)
    x2, _ = get_batch(data, 16, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)


def test_get_batch_edges():
    data = torch.arange(9)
    x, y = get_batch(data, 4, 8)  # exactly block_size + 1 ids: one possible window
    assert x.tolist() == [list(range(8))] * 4 and y.tolist() == [list(range(1, 9))] * 4
    with pytest.raises(ValueError, match="block_size"):
        get_batch(data, 4, 9)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(data.view(3, 3), 1, 1)
    assert len(list(batches(torch.arange(100), 2, 8, n_batches=3))) == 3


def sequences(batch):
    """Full sequences rebuilt from (inputs, targets) without using the library's layout helpers."""
    seqs = []
    for inp, tgt in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert all(t == IGNORE for t in tgt[: batch.prompt_len - 1])
        assert tgt[batch.prompt_len - 1:-1] == inp[batch.prompt_len:]  # targets are inputs shifted by one
        seqs.append(inp + [tgt[-1]])
    return seqs


@pytest.mark.parametrize("name,kwargs", [("copy", {}), ("reverse", {"seq_len": 5}), ("sort", {"n_symbols": 4})])
def test_sequence_tasks(name, kwargs):
    batch = make_task(name, 64, generator=torch.Generator().manual_seed(0), **kwargs)
    L, sep = kwargs.get("seq_len", 8), kwargs.get("n_symbols", 10)
    assert batch.vocab_size == sep + 1 and batch.prompt_len == L + 1
    expect = {"copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": sorted}[name]
    for seq in sequences(batch):
        x, marker, answer = seq[:L], seq[L], seq[L + 1:]
        assert marker == sep and all(0 <= t < sep for t in x)
        assert answer == expect(x)


@pytest.mark.parametrize("n_digits,reverse", [(1, False), (3, False), (3, True)])
def test_addition(n_digits, reverse):
    batch = make_task("addition", 100, n_digits=n_digits, reverse_answer=reverse,
                      generator=torch.Generator().manual_seed(0))
    assert batch.vocab_size == len(ADDITION_CHARS) == 12
    for seq in sequences(batch):
        text = "".join(ADDITION_CHARS[t] for t in seq)
        a, rest = text.split("+")
        b, c = rest.split("=")
        assert len(a) == len(b) == n_digits and len(c) == n_digits + 1
        assert int(c[::-1] if reverse else c) == int(a) + int(b)


def test_kv_recall():
    batch = make_task("kv_recall", 100, n_pairs=5, n_keys=8, n_values=6, generator=torch.Generator().manual_seed(0))
    assert batch.vocab_size == 8 + 6 + 1 and batch.answer_mask.sum(1).tolist() == [1] * 100
    for seq in sequences(batch):
        pairs, query, key, value = seq[:10], seq[10], seq[11], seq[12]
        table = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(table) == 5 and all(k < 8 and 8 <= v < 14 for k, v in table.items())
        assert query == 14 and table[key] == value


def test_repeated_tokens():
    L, R, V = 7, 3, 5
    batch = make_task("repeated_tokens", 2000, block_len=L, n_repeats=R, n_symbols=V,
                      generator=torch.Generator().manual_seed(0))
    assert batch.vocab_size == V and batch.prompt_len == L and batch.inputs.shape == (2000, L * R - 1)
    assert not (batch.targets == IGNORE).any()  # every position predicts the next token
    for inp, tgt, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.answer_mask.tolist()):
        seq = inp + [tgt[-1]]
        assert tgt == seq[1:] and seq == seq[:L] * R
        assert mask == [t + 1 >= L for t in range(L * R - 1)]  # True where the target lies in a repeat
    # the block's symbols are uniform and independent: frequencies of each symbol and of each (first, second)
    # pair within 5 binomial standard errors of 1/V and 1/V^2
    blocks = batch.inputs[:, :L]
    for values, n_kinds in ((blocks.flatten(), V), (blocks[:, 0] * V + blocks[:, 1], V * V)):
        p, n = 1 / n_kinds, len(values)
        freq = torch.bincount(values, minlength=n_kinds).double() / n
        assert (freq - p).abs().max() < 5 * (p * (1 - p) / n) ** 0.5
    with pytest.raises(ValueError, match="n_repeats"):
        make_task("repeated_tokens", 3, n_repeats=1)
    with pytest.raises(ValueError, match="block_len"):
        make_task("repeated_tokens", 3, block_len=0)


def test_cross_entropy_and_accuracy():
    batch = make_task("sort", 10, generator=torch.Generator().manual_seed(0))
    N, T = batch.inputs.shape
    V = batch.vocab_size
    logits = torch.randn(N, T, V)
    loss = F.cross_entropy(logits.view(-1, V), batch.targets.view(-1), ignore_index=IGNORE)
    mask = batch.answer_mask
    manual = -torch.log_softmax(logits, -1)[mask].gather(1, batch.targets[mask][:, None]).mean()
    torch.testing.assert_close(loss, manual)
    perfect = torch.where(mask[..., None], F.one_hot(batch.targets.clamp(min=0), V).float() * 10, logits)
    assert batch.accuracy(perfect) == 1.0
    row, col = 3, int(mask[3].nonzero()[0])
    perfect[row, col] = perfect[row, col].roll(1)  # one wrong answer token in sample 3
    assert batch.accuracy(perfect) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="logits"):
        batch.accuracy(logits[:, :-1])


def test_task_registry_and_bad_input():
    assert set(TASKS) == {"copy", "reverse", "sort", "addition", "kv_recall", "repeated_tokens"}
    for name in TASKS:
        b = make_task(name, 3)
        assert b.inputs.shape == b.targets.shape == b.answer_mask.shape and b.inputs.max() < b.vocab_size
        assert torch.equal(b.prompts, b.inputs[:, :b.prompt_len])
    with pytest.raises(ValueError, match="unknown task"):
        make_task("parity", 3)
    with pytest.raises(ValueError, match="n_digit"):
        make_task("addition", 3, n_digit=2)
    with pytest.raises(ValueError, match="n_pairs"):
        make_task("kv_recall", 3, n_pairs=9, n_keys=8)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("copy", 3, seq_len=0)
