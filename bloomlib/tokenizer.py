"""Tokenizers: text <-> token ids.

Two tokenizers share one interface (`Tokenizer`):

- `CharTokenizer`: one id per character seen in training, plus 256 byte tokens as a fallback so
  any text (emoji, CJK, ...) still encodes, as its UTF-8 bytes.
- `ByteBPETokenizer`: byte-level BPE like GPT-2: 256 byte tokens, then one token per learned merge.

Both end with a special `<eos>` token (id `vocab_size - 1`). `encode` never produces it (the text
"<eos>" is encoded as ordinary characters); append `eos_id` yourself. `decode_bytes` turns it into
nothing (b""), so `decode(encode(s) + [eos_id]) == s`; `id_to_piece(eos_id)` shows "<eos>".
Round trip: `decode(encode(s)) == s` for every Python str that is valid UTF-8 (no lone surrogates).
"""
from __future__ import annotations

import json
import operator
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

EOS = "<eos>"
# GPT-2's pre-tokenizer written with Python's `re` (no \p{L}): contractions, letter runs with an optional
# leading space, digit runs, other symbols, whitespace. Letters are [^\W\d_]; "_" counts as a symbol.
# Every character matches one branch, so "".join(SPLIT_PATTERN.findall(s)) == s.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def _ids_list(ids) -> list[int]:
    """Accept a list of ints or a 1-D tensor / array."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    try:
        return [operator.index(i) for i in ids]
    except TypeError:
        raise ValueError(f"token ids must be a flat sequence of ints, got {str(ids):.80}") from None


def _show(b: bytes) -> str:
    """Printable form of a token's bytes: visible whitespace, <0xE2> for bytes that are not whole UTF-8."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{x:02X}>" for x in b)
    s = s.replace(" ", "␣")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class Tokenizer:
    """Common interface. Subclasses define `_token_bytes` (bytes of each id), `encode` and `to_dict`."""

    type: str = ""
    _token_bytes: list[bytes]  # index = id; the eos entry is b""

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    @property
    def eos_id(self) -> int:
        return len(self._token_bytes) - 1

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids` (may end inside a UTF-8 character: a streaming detokenizer waits)."""
        ids = _ids_list(ids)
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range for vocab_size={n}")
        return b"".join(self._token_bytes[i] for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; invalid UTF-8 (e.g. a character cut in half) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        """Printable form of one token, for lessons: "␣the", "\\n", "<0xE2>", "<eos>"."""
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is out of range for vocab_size={self.vocab_size}")
        return EOS if i == self.eos_id else _show(self._token_bytes[i])

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    def _check_text(self, text) -> None:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """ids 0..n-1: the known characters (sorted by code point); n..n+255: bytes 0x00..0xFF; then <eos>."""

    type = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: chars must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self._token_bytes = [c.encode("utf-8") for c in chars] + [bytes([b]) for b in range(256)] + [b""]

    @classmethod
    def train(cls, text: str, max_chars: int | None = None) -> "CharTokenizer":
        """Vocabulary = the characters of `text` (the `max_chars` most frequent ones if given)."""
        counts = Counter(text)
        if max_chars is not None:
            if max_chars < 0:
                raise ValueError(f"max_chars must be >= 0, got {max_chars}")
            counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_chars])
        return cls(sorted(counts))

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        n, out = len(self.chars), []
        for c in text:
            i = self.stoi.get(c)
            if i is not None:
                out.append(i)
            else:  # byte fallback
                out.extend(n + b for b in c.encode("utf-8"))
        return out

    def to_dict(self) -> dict:
        return {"type": self.type, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["chars"])


def _merge(seq: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `seq`, left to right."""
    out, i, n = [], 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


class ByteBPETokenizer(Tokenizer):
    """ids 0..255: bytes; 256+r: the r-th merge (a, b) -> the concatenation; last id: <eos>."""

    type = "byte_bpe"

    def __init__(self, merges: Sequence[Sequence[int]], pattern: str = SPLIT_PATTERN):
        self.merges = [tuple(m) for m in merges]
        self.pattern = pattern
        self._split = re.compile(pattern)
        self._token_bytes = [bytes([b]) for b in range(256)]
        for r, m in enumerate(self.merges):
            if len(m) != 2 or not all(isinstance(t, int) and 0 <= t < 256 + r for t in m):
                raise ValueError(f"ByteBPETokenizer: merge {r} {m!r} must be two ids below {256 + r}")
            self._token_bytes.append(self._token_bytes[m[0]] + self._token_bytes[m[1]])
        self._token_bytes.append(b"")  # <eos>
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    def pretokenize(self, text: str) -> list[str]:
        return self._split.findall(text)

    @classmethod
    def train(cls, text: str, vocab_size: int, progress: bool = False) -> "ByteBPETokenizer":
        """Learn `vocab_size - 257` merges from `text`.

        Pair counts are kept over the unique pre-tokenized words, weighted by frequency, and updated
        only for the words that contain the merged pair. Ties go to the smallest pair (a, b).
        """
        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"vocab_size must be an int >= 257 (256 bytes + <eos>), got {vocab_size!r}")
        words = Counter(re.findall(SPLIT_PATTERN, text))
        seqs = [list(w.encode("utf-8")) for w in words]
        freqs = list(words.values())
        counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
        for w, (seq, f) in enumerate(zip(seqs, freqs)):
            for p in zip(seq, seq[1:]):
                counts[p] += f
                where[p].add(w)
        merges = []
        steps = range(vocab_size - 257)
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc="BPE merges")
        for r in steps:
            if not counts:
                raise ValueError(f"the training text has too few distinct byte pairs for vocab_size={vocab_size} "
                                 f"(stopped after {r} merges)")
            best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
            merges.append(best)
            for w in where.pop(best):
                seq, f = seqs[w], freqs[w]
                for p in zip(seq, seq[1:]):
                    counts[p] -= f
                    if counts[p] == 0:
                        del counts[p]
                seq = seqs[w] = _merge(seq, best, 256 + r)
                for p in zip(seq, seq[1:]):
                    counts[p] += f
                    where[p].add(w)
        return cls(merges)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = list(word.encode("utf-8"))
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, float("inf")))
                if pair not in self.ranks:
                    break
                ids = _merge(ids, pair, 256 + self.ranks[pair])
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        out: list[int] = []
        for word in self._split.findall(text):
            out.extend(self._encode_word(word))
        return out

    def to_dict(self) -> dict:
        return {"type": self.type, "pattern": self.pattern, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteBPETokenizer":
        return cls(d["merges"], d.get("pattern", SPLIT_PATTERN))


TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "byte_bpe": ByteBPETokenizer}


def load_tokenizer(path_or_dict: str | Path | dict) -> Tokenizer:
    """A tokenizer from a JSON file written by `save` (or the dict from `to_dict`)."""
    d = path_or_dict
    if not isinstance(d, dict):
        path = Path(d)
        if not path.is_file():
            raise ValueError(f"tokenizer file {str(path)!r} does not exist")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("type") not in TOKENIZERS:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"unknown tokenizer type {kind!r}; expected one of {sorted(TOKENIZERS)}")
    try:
        return TOKENIZERS[d["type"]].from_dict(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"invalid {d['type']} tokenizer data: {e!r}") from None
