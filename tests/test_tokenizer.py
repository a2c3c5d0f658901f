"""Tokenizers: exact round trips on arbitrary Unicode, and BPE checked against two references
(a naive BPE written here, and Hugging Face `tokenizers` encoding with our merges)."""
import random
import re
from collections import Counter

import pytest
import torch

from bloomlib.training.data import load_corpus
from bloomlib.tokenizer import SPLIT_PATTERN, ByteBPETokenizer, CharTokenizer, load_tokenizer

RANGES = [(0x00, 0x7F), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
          (0x900, 0x97F), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
          (0xFE00, 0xFE0F), (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF), (0x10FF00, 0x10FFFF)]


def random_texts(n=200, seed=0):
    rng = random.Random(seed)
    extras = ["\x00", " ", "  ", "\n", "\r\n", "\t", "'s", "'ll", "_", "e\u0301", "👩\u200d💻", "🇫🇷", "1²½"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(0, 40)):
            if rng.random() < 0.3:
                parts.append(rng.choice(extras))
            else:
                lo, hi = rng.choice(RANGES)
                parts.append(chr(rng.randint(lo, hi)))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def bpe(corpus):
    return ByteBPETokenizer.train(corpus, 512)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_round_trip_arbitrary_unicode(kind, bpe):
    tok = CharTokenizer.train("hello world") if kind == "char" else bpe
    for s in random_texts():
        ids = tok.encode(s)
        assert all(0 <= i < tok.eos_id for i in ids)
        assert tok.decode(ids) == s
        assert tok.decode_bytes(ids) == s.encode("utf-8")
        assert tok.decode(ids + [tok.eos_id]) == s


def test_round_trip_corpus(corpus, bpe):
    char = CharTokenizer.train(corpus)
    assert char.decode(char.encode(corpus)) == corpus
    ids = bpe.encode(corpus)
    assert bpe.decode(ids) == corpus
    assert len(ids) < len(corpus.encode("utf-8")) / 2  # 255 merges compress English prose well


def test_char_vocabulary_and_byte_fallback():
    tok = CharTokenizer.train("abcab")
    assert tok.chars == ["a", "b", "c"] and tok.vocab_size == 3 + 256 + 1 and tok.eos_id == tok.vocab_size - 1
    assert tok.encode("cab") == [2, 0, 1]
    assert tok.encode("é") == [3 + b for b in "é".encode("utf-8")]  # unknown: its UTF-8 bytes
    top2 = CharTokenizer.train("aaaabbbcc d", max_chars=2)
    assert top2.chars == [c for c, _ in Counter("aaaabbbcc d").most_common(2)]


def test_pretokenizer_covers_every_character():
    split = re.compile(SPLIT_PATTERN)
    for s in random_texts(seed=1):
        assert "".join(split.findall(s)) == s


def test_bpe_vocab_size_and_eos(bpe, corpus):
    assert bpe.vocab_size == 512 and bpe.eos_id == 511 and len(bpe.merges) == 512 - 257
    assert bpe.eos_id not in bpe.encode(corpus[:5000] + "<eos>")
    assert bpe.id_to_piece(bpe.eos_id) == "<eos>"
    with pytest.raises(ValueError, match="vocab_size"):
        ByteBPETokenizer.train("abc", 256)
    with pytest.raises(ValueError, match="too few"):
        ByteBPETokenizer.train("ab ab", 300)


def test_every_merge_shortens_the_training_text(corpus):
    text = corpus[:20000]
    tok = ByteBPETokenizer.train(text, 257 + 40)
    lengths = [len(ByteBPETokenizer(tok.merges[:r]).encode(text)) for r in range(len(tok.merges) + 1)]
    assert all(b < a for a, b in zip(lengths, lengths[1:]))


def test_partial_utf8_bytes(bpe):
    ids = bpe.encode("a🙂")
    emoji = "🙂".encode("utf-8")
    assert bpe.decode_bytes(ids[:-2]) == b"a" + emoji[:2]  # an English-trained BPE keeps the emoji as 4 bytes
    assert bpe.decode(ids[:-2]) == "a\ufffd"
    assert bpe.id_to_piece(ids[-1]) == f"<0x{emoji[-1]:02X}>"


def test_id_to_piece_matches_decode(bpe):
    for i in range(bpe.eos_id):
        text = bpe.decode([i])
        if "\ufffd" not in text and text.isprintable():
            assert bpe.id_to_piece(i).replace("␣", " ") == text
    assert bpe.id_to_piece(bpe.encode(" the")[0]) == "␣the"


def naive_bpe(text, n_merges):
    """Reference: recount every pair over every word occurrence at each step; apply merges in order."""
    words = [list(w.encode("utf-8")) for w in re.findall(SPLIT_PATTERN, text)]
    merges = []
    for r in range(n_merges):
        counts = {}
        for w in words:
            for i in range(len(w) - 1):
                counts[(w[i], w[i + 1])] = counts.get((w[i], w[i + 1]), 0) + 1
        top = max(counts.values())
        pair = sorted(p for p, c in counts.items() if c == top)[0]
        merges.append(pair)
        words = [apply_merge(w, pair, 256 + r) for w in words]
    return merges


def apply_merge(w, pair, new):
    """Left to right, by slicing (the library walks two ids at a time)."""
    res, i = [], 0
    while i < len(w):
        if w[i:i + 2] == list(pair):
            res.append(new)
            i += 2
        else:
            res.append(w[i])
            i += 1
    return res


def naive_encode(text, merges):
    ids = []
    for w in re.findall(SPLIT_PATTERN, text):
        seq = list(w.encode("utf-8"))
        for r, pair in enumerate(merges):
            seq = apply_merge(seq, pair, 256 + r)
        ids += seq
    return ids


def test_bpe_matches_naive_reference(corpus):
    text = corpus[:6000] + " naïve café 日本語 🙂🙂 aaaa aaaaa"
    tok = ByteBPETokenizer.train(text, 257 + 60)
    assert tok.merges == naive_bpe(text, 60)
    probe = corpus[100000:104000] + "".join(random_texts(20, seed=2))
    assert tok.encode(probe) == naive_encode(probe, tok.merges)


def test_bpe_encoding_matches_hf_tokenizers(bpe, corpus):
    tokenizers = pytest.importorskip("tokenizers")
    b2u = pytest.importorskip("transformers.convert_slow_tokenizer").bytes_to_unicode()  # GPT-2's byte alphabet
    pieces = [bpe.decode_bytes([i]) for i in range(bpe.eos_id)]
    assert len(set(pieces)) == len(pieces)  # HF's vocab is keyed by string
    vocab = {"".join(b2u[b] for b in p): i for i, p in enumerate(pieces)}
    merges = [("".join(b2u[b] for b in pieces[a]), "".join(b2u[b] for b in pieces[b])) for a, b in bpe.merges]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    text = corpus[200000:260000] + "".join(random_texts(50, seed=3))
    words = bpe.pretokenize(text)
    assert hf.encode(words, is_pretokenized=True).ids == bpe.encode(text)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load(tmp_path, kind, bpe, corpus):
    tok = CharTokenizer.train(corpus[:3000]) if kind == "char" else bpe
    tok.save(tmp_path / "tok.json")
    for again in (load_tokenizer(tmp_path / "tok.json"), load_tokenizer(tok.to_dict())):
        assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
        for s in random_texts(20, seed=4) + [corpus[:5000]]:
            assert again.encode(s) == tok.encode(s)


def test_bad_input(tmp_path, bpe):
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(ValueError, match="str"):
        bpe.encode(b"bytes")
    assert bpe.decode(torch.tensor(bpe.encode("hi there"))) == "hi there"
    assert bpe.decode(list(torch.tensor(bpe.encode("hi")).numpy())) == "hi"
    with pytest.raises(ValueError, match="flat sequence"):
        bpe.decode([[1, 2]])
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer({"type": "wordpiece"})
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="merge 0"):
        load_tokenizer({"type": "byte_bpe", "merges": [[256, 1]]})
    with pytest.raises(ValueError, match="invalid char"):
        load_tokenizer({"type": "char"})
