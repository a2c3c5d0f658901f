"""Data for the course, all offline: a real English corpus, batching, and synthetic tasks.

- `load_corpus()`: the text of CPython's help topics (`pydoc_data.topics`, ~465k characters of prose
  about Python, shipped with the interpreter; the exact text depends on the Python version).
- `train_val_split`, `get_batch`, `batches`: nanoGPT-style next-token batches from one long id tensor.
- Synthetic tasks (`TASKS`, `make_task`) with exact answers: copy, reverse, sort, addition, key-value
  recall, repeated random tokens (in-context learning). Each returns a `TaskBatch` ready for a decoder-only model:
  `F.cross_entropy(logits.view(-1, V), batch.targets.view(-1), ignore_index=-100)`.
  A `TaskSource` hands fresh batches of a task to the training loop in place of a corpus.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

IGNORE = -100  # targets with this value carry no loss (F.cross_entropy's default ignore_index)


def load_corpus() -> str:
    """All `pydoc_data.topics` entries, sorted by topic name, joined by blank lines."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise RuntimeError("the course corpus comes from the standard-library module pydoc_data.topics, which "
                           "this Python installation lacks (some distributions strip it; e.g. on Debian "
                           "install the full python3 package, or use a python.org / conda / uv Python)") from e
    return "\n\n".join(topics[k] for k in sorted(topics))


def train_val_split(ids: Sequence[int] | torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split of a 1-D id sequence: the first part trains, the tail validates. Returns LongTensors."""
    data = torch.as_tensor(ids, dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(data.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_train = int(len(data) * (1.0 - val_fraction))
    if n_train == 0 or n_train == len(data):
        raise ValueError(f"{len(data)} ids are too few to split with val_fraction={val_fraction}")
    return data[:n_train], data[n_train:]


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a 1-D LongTensor. x: (B, T) ids; y: (B, T), y[:, t] = the id after x[:, t]."""
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of ids, got shape {tuple(data.shape)}")
    if batch_size <= 0 or block_size <= 0:
        raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
    if len(data) < block_size + 1:
        raise ValueError(f"data has {len(data)} ids, fewer than block_size + 1 = {block_size + 1}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    rows = starts[:, None] + torch.arange(block_size)
    x, y = data[rows], data[rows + 1]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def batches(data: torch.Tensor, batch_size: int, block_size: int, n_batches: int | None = None,
            generator: torch.Generator | None = None, device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`n_batches` calls of `get_batch` (forever if None)."""
    for _ in itertools.count() if n_batches is None else range(n_batches):
        yield get_batch(data, batch_size, block_size, generator, device)


@dataclass
class TaskBatch:
    """A batch of a synthetic task: each sample is prompt + answer, teacher-forced.

    inputs:      (N, T) ids, the sequence without its last token.
    targets:     (N, T) ids, the sequence shifted left by one, IGNORE (-100) where the target is in the prompt.
    answer_mask: (N, T) bool, True where targets hold an answer token.
    prompt_len:  P, the prompt length: answers are predicted at input positions P-1 .. T-1.
    vocab_size:  the number of ids the task uses (the model's vocab must be at least this).
    """

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    answer_mask: torch.Tensor
    prompt_len: int
    vocab_size: int

    @property
    def prompts(self) -> torch.Tensor:
        """(N, P) what a model is given at generation time."""
        return self.inputs[:, : self.prompt_len]

    @property
    def answers(self) -> torch.Tensor:
        """(N, A) the exact answers."""
        return self.targets[:, self.prompt_len - 1:]

    def accuracy(self, logits: torch.Tensor) -> float:
        """Fraction of samples whose every answer token is the argmax of `logits` (N, T, V)."""
        n, t = self.inputs.shape
        if logits.dim() != 3 or logits.shape[:2] != (n, t):
            raise ValueError(f"logits must have shape ({n}, {t}, vocab), got {tuple(logits.shape)}")
        correct = (logits.argmax(-1) == self.targets) | ~self.answer_mask
        return correct.all(dim=1).float().mean().item()


def _task(name: str, prompt: torch.Tensor, answer: torch.Tensor, vocab_size: int) -> TaskBatch:
    seq = torch.cat([prompt, answer], dim=1)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    targets[:, : prompt.shape[1] - 1] = IGNORE
    return TaskBatch(name, inputs, targets, targets != IGNORE, prompt.shape[1], vocab_size)


def _check(n_samples: int, **positive: int) -> None:
    for k, v in {"n_samples": n_samples, **positive}.items():
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{k} must be a positive int, got {v!r}")


def _symbols(n_samples, seq_len, n_symbols, generator):
    _check(n_samples, seq_len=seq_len, n_symbols=n_symbols)
    x = torch.randint(n_symbols, (n_samples, seq_len), generator=generator)
    return x, torch.cat([x, torch.full((n_samples, 1), n_symbols)], 1)  # (x, the prompt: x then SEP)


def copy_task(n_samples: int, seq_len: int = 8, n_symbols: int = 10, generator=None) -> TaskBatch:
    """x_1..x_L SEP x_1..x_L. Symbols are ids 0..n_symbols-1, SEP = n_symbols; vocab n_symbols+1.
    An induction-style task: answer position i attends to prompt position i."""
    x, prompt = _symbols(n_samples, seq_len, n_symbols, generator)
    return _task("copy", prompt, x, n_symbols + 1)


def reverse_task(n_samples: int, seq_len: int = 8, n_symbols: int = 10, generator=None) -> TaskBatch:
    """x_1..x_L SEP x_L..x_1 (same vocabulary as copy). Answer position i attends to prompt position L-1-i."""
    x, prompt = _symbols(n_samples, seq_len, n_symbols, generator)
    return _task("reverse", prompt, x.flip(1), n_symbols + 1)


def sort_task(n_samples: int, seq_len: int = 8, n_symbols: int = 10, generator=None) -> TaskBatch:
    """x_1..x_L SEP sorted(x) ascending (same vocabulary as copy)."""
    x, prompt = _symbols(n_samples, seq_len, n_symbols, generator)
    return _task("sort", prompt, x.sort(dim=1).values, n_symbols + 1)


ADDITION_CHARS = "0123456789+="  # id -> character for addition_task: digits 0-9, PLUS = 10, EQUALS = 11


def addition_task(n_samples: int, n_digits: int = 2, reverse_answer: bool = False, generator=None) -> TaskBatch:
    """"a+b=c" with a, b zero-padded to n_digits and c to n_digits+1 digits, e.g. "12+34=046".

    Ids: digits 0-9, "+" = 10, "=" = 11 (see ADDITION_CHARS); vocab 12. With reverse_answer the sum's
    digits come least-significant first, the order in which carries are computed (easier to learn)."""
    _check(n_samples, n_digits=n_digits)
    if n_digits > 18:
        raise ValueError(f"n_digits must be at most 18 (int64), got {n_digits}")
    a = torch.randint(10 ** n_digits, (n_samples,), generator=generator)
    b = torch.randint(10 ** n_digits, (n_samples,), generator=generator)

    def digits(v: torch.Tensor, n: int) -> torch.Tensor:  # (N,) -> (N, n), most significant first
        return v[:, None] // 10 ** torch.arange(n - 1, -1, -1) % 10

    col = lambda i: torch.full((n_samples, 1), i)  # noqa: E731
    prompt = torch.cat([digits(a, n_digits), col(10), digits(b, n_digits), col(11)], 1)
    c = digits(a + b, n_digits + 1)
    return _task("addition", prompt, c.flip(1) if reverse_answer else c, 12)


def kv_recall_task(n_samples: int, n_pairs: int = 4, n_keys: int = 16, n_values: int = 16, generator=None) -> TaskBatch:
    """k_1 v_1 ... k_P v_P QUERY k_q -> v_q, with distinct keys and k_q one of them.

    Ids: keys 0..n_keys-1, values n_keys..n_keys+n_values-1, QUERY = n_keys+n_values; vocab n_keys+n_values+1.
    The answer needs attention from the query key to its earlier copy and on to the value after it."""
    _check(n_samples, n_pairs=n_pairs, n_keys=n_keys, n_values=n_values)
    if n_pairs > n_keys:
        raise ValueError(f"n_pairs={n_pairs} needs at least as many keys, got n_keys={n_keys}")
    keys = torch.rand(n_samples, n_keys, generator=generator).argsort(dim=1)[:, :n_pairs]
    values = n_keys + torch.randint(n_values, (n_samples, n_pairs), generator=generator)
    q = torch.randint(n_pairs, (n_samples, 1), generator=generator)
    query = torch.full((n_samples, 1), n_keys + n_values)
    prompt = torch.cat([torch.stack([keys, values], 2).flatten(1), query, keys.gather(1, q)], 1)
    return _task("kv_recall", prompt, values.gather(1, q), n_keys + n_values + 1)


def repeated_tokens_task(n_samples: int, block_len: int = 32, n_repeats: int = 2, n_symbols: int = 64,
                         generator=None) -> TaskBatch:
    """A block of block_len uniform random symbols (ids 0..n_symbols-1) repeated n_repeats times, as in Olsson et
    al. 2022's in-context learning tests; vocab n_symbols.

    Every position has a target, the next token (nothing is IGNORE): the first copy is unpredictable (a loss of
    ln n_symbols at best), a repeat is predictable only from its earlier copy (an induction mechanism). The first
    copy is the prompt: answer_mask is True where the target lies in a repeat (input positions block_len-1 ..)."""
    _check(n_samples, block_len=block_len, n_repeats=n_repeats, n_symbols=n_symbols)
    if n_repeats < 2:
        raise ValueError(f"n_repeats must be at least 2 (a block and one repeat of it), got {n_repeats}")
    seq = torch.randint(n_symbols, (n_samples, block_len), generator=generator).repeat(1, n_repeats)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    answer_mask = torch.zeros_like(targets, dtype=torch.bool)
    answer_mask[:, block_len - 1:] = True
    return TaskBatch("repeated_tokens", inputs, targets, answer_mask, block_len, n_symbols)


TASKS = {"copy": copy_task, "reverse": reverse_task, "sort": sort_task, "addition": addition_task,
         "kv_recall": kv_recall_task, "repeated_tokens": repeated_tokens_task}


def make_task(name: str, n_samples: int, generator: torch.Generator | None = None, **kwargs) -> TaskBatch:
    """`TASKS[name](n_samples, generator=generator, **kwargs)`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    allowed = set(inspect.signature(TASKS[name]).parameters) - {"n_samples", "generator"}
    if set(kwargs) - allowed:
        raise ValueError(f"task {name!r} has no option(s) {sorted(set(kwargs) - allowed)}; it takes {sorted(allowed)}")
    return TASKS[name](n_samples, generator=generator, **kwargs)


@dataclass(frozen=True)
class TaskSource:
    """Endless batches of a synthetic task, for `bloomlib.training.train.train` in place of a 1-D id tensor.

    `source(batch_size, generator, device)` -> (inputs, targets), each (batch_size, T): make_task(name, batch_size,
    **options), with option `vary` drawn uniformly from vary_range (inclusive) once per batch, so that a batch has
    one length. Every batch is fresh, so a training source and a validation source draw from one distribution.
    """

    name: str
    options: dict = field(default_factory=dict)
    vary: str | None = None
    vary_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if (self.vary is None) != (self.vary_range is None):
            raise ValueError(f"TaskSource: give vary and vary_range together, got vary={self.vary!r}, "
                             f"vary_range={self.vary_range!r}")
        r = self.vary_range
        if r is not None and not (len(r) == 2 and all(isinstance(v, int) for v in r) and 0 < r[0] <= r[1]):
            raise ValueError(f"TaskSource: vary_range must be ints (low, high) with 0 < low <= high, got {r!r}")
        for value in self.vary_range or (None,):  # make_task checks the name and options (both ends of the range)
            make_task(self.name, 1, torch.Generator(), **self.options, **({} if value is None else {self.vary: value}))

    def __call__(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        options = dict(self.options)
        if self.vary is not None:
            low, high = self.vary_range
            options[self.vary] = int(torch.randint(low, high + 1, (1,), generator=generator))
        batch = make_task(self.name, batch_size, generator=generator, **options)
        if device is None:
            return batch.inputs, batch.targets
        return batch.inputs.to(device), batch.targets.to(device)
