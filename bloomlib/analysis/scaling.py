"""Scaling laws (the Evaluate lesson): Chinchilla's loss law L(N, D) = E + A / N^alpha + B / D^beta, its
compute-optimal split of a budget C = 6 N D, Hoffmann et al.'s third fitting approach (Huber loss on log L,
L-BFGS from a grid of starts) with bootstrap intervals, IsoFLOP curves, what a training run costs, and the
table of the lesson-05 ladder of tiny GPTs (zoo family "lesson05", ladder/d{d_model}-s{steps}).

N is a parameter count, D a count of training tokens, C training FLOPs, L a loss in nats per token.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np
import torch
import torch.nn as nn

from bloomlib.analysis._lm import check_ids, check_int
from bloomlib.model import count_parameters as _count_distinct_parameters
from bloomlib.training.train import evaluate
from bloomlib.training.zoo import (LADDER_BATCH, LADDER_EVAL_BATCHES, LADDER_SEQ_LEN, load_zoo_model,
                                   shipped_models)

ArrayLike = float | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class ChinchillaFit:
    """The constants of L(N, D) = E + A / N^alpha + B / D^beta (E: the irreducible loss)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N: ArrayLike, D: ArrayLike) -> float | np.ndarray:
        """L(N, D); N and D broadcast like numpy arrays."""
        return chinchilla_loss(N, D, *astuple(self))

    def compute_optimal(self, C: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss at C = 6 N D FLOPs."""
        return compute_optimal(C, *astuple(self))


# Hoffmann et al. 2022 (Chinchilla), approach 3, as printed; Besiroglu et al. 2024's refit of the runs they
# reconstructed from Hoffmann's figure, which agrees with approaches 1 and 2 (about 20 tokens per parameter).
HOFFMANN_2022 = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BESIROGLU_2024 = ChinchillaFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
CONSTANTS = tuple(f.name for f in fields(ChinchillaFit))  # ("E", "A", "B", "alpha", "beta")


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    """value as a float64 array, or a ValueError naming `name` unless it is finite and > 0 everywhere."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be finite and positive, got {value!r}")
    return arr


def chinchilla_loss(N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, alpha: float,
                    beta: float) -> float | np.ndarray:
    """E + A / N^alpha + B / D^beta in float64; scalars give a float, arrays (broadcast) an array."""
    loss = E + A / _positive("N", N) ** alpha + B / _positive("D", D) ** beta
    return float(loss) if loss.ndim == 0 else loss


def compute_optimal(C: float, E: float, A: float, B: float, alpha: float, beta: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising chinchilla_loss under C = 6 N D (E does not move the optimum).

    Setting dL/dN = 0 along D = C / (6N) gives N* = G (C/6)^(beta/(alpha+beta)) with
    G = (alpha A / (beta B))^(1/(alpha+beta)), and D* = C / (6 N*). E.g. at Chinchilla's 5.76e23 FLOPs
    HOFFMANN_2022 gives ~93 tokens per parameter, the refit BESIROGLU_2024 ~18.
    """
    C = float(_positive("C", C))
    for name, value in (("A", A), ("B", B), ("alpha", alpha), ("beta", beta)):
        _positive(name, value)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n_opt = G * (C / 6) ** (beta / (alpha + beta))
    return n_opt, C / (6 * n_opt)


def isoflop_curve(fit: ChinchillaFit, C: float, N: ArrayLike) -> np.ndarray:
    """The loss of each model size N (array) trained on D = C / (6N) tokens: one IsoFLOP curve, (len(N),)."""
    C = float(_positive("C", C))
    N = np.atleast_1d(_positive("N", N))
    return np.asarray(fit.loss(N, C / (6 * N)))


# --- fitting (Hoffmann et al. 2022, approach 3) -------------------------------------------------------------------

# Hoffmann's grid of starts for (alpha, beta, e, a, b); a and b are log A and log B, e is log E.
GRID = dict(alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5), e=np.arange(-1, 1.01, 0.5),
            a=np.arange(0, 25.1, 5), b=np.arange(0, 25.1, 5))
N_STARTS = 8  # L-BFGS runs from the N_STARTS grid points of lowest objective (the grid is screened in one pass)


def _check_points(N: ArrayLike, D: ArrayLike, L: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log N, log D, log L as float64 arrays of one length >= 5 (5 constants to fit)."""
    arrays = [np.atleast_1d(_positive(name, v)) for name, v in (("N", N), ("D", D), ("L", L))]
    for name, arr in zip("NDL", arrays):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    lengths = {name: len(arr) for name, arr in zip("NDL", arrays)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"N, D and L must have the same length, got lengths {lengths}")
    if lengths["N"] < 5:
        raise ValueError(f"N, D and L must hold at least 5 points to fit 5 constants, got {lengths['N']}")
    return tuple(np.log(arr) for arr in arrays)


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
               delta: float) -> tuple[np.ndarray, np.ndarray]:
    """theta (..., 5) = (a, b, e, alpha, beta) -> the summed Huber loss of the predicted log L (...) and its
    gradient (..., 5). Written out by hand: autograd's overhead per call would dominate a 5-constant fit."""
    a, b, e, alpha, beta = (theta[..., k, None] for k in range(5))
    t_n, t_d = a - alpha * logN, b - beta * logD  # (..., n) each; e: (..., 1)
    top = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e
    r = top + np.log(total) - logL  # predicted log L minus observed
    abs_r = np.abs(r)
    huber = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta)).sum(-1)
    dr = np.clip(r, -delta, delta) / total  # Huber'(r) over the softmax's denominator
    g_n, g_d = dr * w_n, dr * w_d
    grad = np.stack([g_n.sum(-1), g_d.sum(-1), (dr * w_e).sum(-1), -(g_n * logN).sum(-1), -(g_d * logD).sum(-1)], -1)
    return huber, grad


def _best_of_grid(logN, logD, logL, delta: float, k: int) -> np.ndarray:
    """The k points of Hoffmann's grid (rows of (a, b, e, alpha, beta)) of lowest objective, best first: (k, 5)."""
    grid = np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))
    return grid[np.argsort(_objective(grid, logN, logD, logL, delta)[0], kind="stable")[:k]]


def _lbfgs(theta0: np.ndarray, logN, logD, logL, delta: float) -> tuple[np.ndarray, float]:
    """One L-BFGS run (torch.optim.LBFGS, float64) from theta0 (5,): (theta, objective).

    It runs in centred coordinates (a - alpha mean(log N), b - beta mean(log D), ...): the same minimum, but a and
    alpha no longer trade off along a narrow valley (3-5 x fewer evaluations, and a lower minimum, were measured).
    The objective is a sum of terms of order delta |r|, hence tolerances far below torch's defaults."""
    shift = np.array([logN.mean(), logD.mean()])
    start = theta0.copy()
    start[:2] -= start[3:] * shift
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        value, grad = _objective(theta.detach().numpy(), logN - shift[0], logD - shift[1], logL, delta)
        theta.grad = torch.from_numpy(grad)
        return torch.tensor(float(value), dtype=torch.float64)

    opt.step(closure)
    final = theta.detach().numpy().copy()
    final[:2] += final[3:] * shift
    return final, float(_objective(final, logN, logD, logL, delta)[0])


def _fit_logs(logN, logD, logL, delta: float, starts: np.ndarray | None) -> ChinchillaFit:
    if starts is None:
        starts = _best_of_grid(logN, logD, logL, delta, N_STARTS)
    best = min((_lbfgs(s, logN, logD, logL, delta) for s in starts), key=lambda run: run[1])
    a, b, e, alpha, beta = map(float, best[0])
    return ChinchillaFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _check_starts(starts) -> np.ndarray | None:
    """starts as (S, 5) float64 rows of (a, b, e, alpha, beta); None stays None."""
    if starts is None:
        return None
    arr = np.asarray(starts, dtype=np.float64)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 5 or not np.isfinite(arr).all():
        raise ValueError(f"starts must be one or more finite rows of (a, b, e, alpha, beta), got shape {arr.shape}")
    return arr


def fit_chinchilla(N: ArrayLike, D: ArrayLike, L: ArrayLike, *, delta: float = 1e-3,
                   starts: Sequence[Sequence[float]] | np.ndarray | None = None) -> ChinchillaFit:
    """Hoffmann et al.'s approach 3: the constants minimising sum_i Huber_delta(LSE(a - alpha log N_i,
    b - beta log D_i, e) - log L_i) over (a, b, e, alpha, beta), with A = e^a, B = e^b, E = e^e.

    N, D, L: (n,) with n >= 5, all positive. The loss is summed over points, not averaged (Besiroglu et al. 2024
    trace the printed constants partly to a stopping tolerance met too early). starts: (S, 5) rows of
    (a, b, e, alpha, beta), each run by L-BFGS in float64, the best kept; None screens Hoffmann's grid
    (alpha, beta in 0..2 by 0.5, e in -1..1 by 0.5, a, b in 0..25 by 5) and runs from its N_STARTS best points.
    """
    logN, logD, logL = _check_points(N, D, L)
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive number, got {delta!r}")
    return _fit_logs(logN, logD, logL, float(delta), _check_starts(starts))


def bootstrap_fits(N: ArrayLike, D: ArrayLike, L: ArrayLike, *, n_boot: int = 200, seed: int = 0,
                   **fit_kw) -> list[ChinchillaFit]:
    """n_boot fits of fit_chinchilla, each on the points resampled with replacement (numpy, seeded).

    Without starts in fit_kw every resample runs L-BFGS once, from the full data's fit (measured on the ladder and
    on noisy synthetic points: adding the resample's best grid point as a second start changed no interval, and
    fewer iterations narrow the intervals of the constants the data leave loose). A resample that holds fewer
    than 5 distinct points is drawn again."""
    logN, logD, logL = _check_points(N, D, L)
    check_int("n_boot", n_boot, 1)
    delta = float(fit_kw.pop("delta", 1e-3))
    starts = _check_starts(fit_kw.pop("starts", None))
    if fit_kw:
        raise ValueError(f"bootstrap_fits passes only delta and starts to fit_chinchilla, got {sorted(fit_kw)}")
    if starts is None:
        full = fit_chinchilla(N, D, L, delta=delta)
        starts = np.array([[math.log(full.A), math.log(full.B), math.log(full.E), full.alpha, full.beta]])
    rng = np.random.default_rng(seed)
    n = len(logN)
    fits = []
    while len(fits) < n_boot:
        idx = rng.integers(0, n, n)
        if len(np.unique(idx)) >= 5:
            fits.append(_fit_logs(logN[idx], logD[idx], logL[idx], delta, starts))
    return fits


def fit_intervals(fits: Sequence[ChinchillaFit],
                  q: tuple[float, float] = (0.05, 0.95)) -> dict[str, tuple[float, float]]:
    """The q-quantiles of each constant over the fits: {"E": (low, high), "A": ..., "alpha": ..., "beta": ...}."""
    if not fits or not all(isinstance(f, ChinchillaFit) for f in fits):
        raise ValueError(f"fits must be a non-empty list of ChinchillaFit, got {type(fits).__name__}")
    if len(q) != 2 or not 0 <= q[0] <= q[1] <= 1:
        raise ValueError(f"q must be two quantiles 0 <= low <= high <= 1, got {q!r}")
    values = np.array([astuple(f) for f in fits])
    low, high = np.quantile(values, q, axis=0)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(CONSTANTS, low, high)}


# --- cost and size ---------------------------------------------------------------------------------------------


def training_cost(flops: float, *, peak_flops: float = 989e12, utilization: float = 0.4,
                  dollars_per_gpu_hour: float = 2.0) -> dict[str, float]:
    """GPU hours and dollars for `flops` of training: flops / (peak_flops * utilization) seconds.

    Assumptions of the defaults: an H100 SXM's dense BF16 peak (989 TFLOP/s, no sparsity), 40 % model FLOPs
    utilisation (good large-scale runs reach 35-50 %), $2 per GPU hour (a cloud rental price; it varies).
    """
    flops = float(_positive("flops", flops))
    peak_flops = float(_positive("peak_flops", peak_flops))
    dollars_per_gpu_hour = float(_positive("dollars_per_gpu_hour", dollars_per_gpu_hour))
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization!r}")
    gpu_hours = flops / (peak_flops * utilization) / 3600
    return {"gpu_hours": gpu_hours, "dollars": gpu_hours * dollars_per_gpu_hour}


def count_parameters(model: nn.Module) -> int:
    """Every parameter, embeddings included, tied weights counted once: the N of a scaling law here.

    Kaplan et al. 2020 counted non-embedding parameters; Pearce & Song 2024 and Porian et al. 2024 attribute
    most of the gap between Kaplan's and Chinchilla's exponents to that choice at small scale, where embeddings
    are a large share of the model (in the lesson-05 ladder, embedding and untied head are 76 % of the d_model 12
    GPT's parameters and 46 % of the d_model 48 one's)."""
    return _count_distinct_parameters(model, non_embedding=False)


# --- the lesson-05 ladder --------------------------------------------------------------------------------------

LADDER_PREFIX = "lesson05/ladder/"


def ladder_table(names: Sequence[str] | None = None) -> list[dict]:
    """One row per shipped ladder checkpoint (names: "lesson05/ladder/d12-s180", ...; None: every shipped one),
    sorted by (d_model, steps): name, N (count_parameters), D (tokens seen: steps x batch_size x seq_len),
    val_loss (the one the checkpoint's meta records), d_model, steps."""
    if names is None:
        names = [n for n in shipped_models() if n.startswith(LADDER_PREFIX)]
    rows = []
    for name in names:
        if not str(name).startswith(LADDER_PREFIX):
            raise ValueError(f"names must be ladder models ({LADDER_PREFIX}...), got {name!r}")
        ckpt = load_zoo_model(name)
        train = ckpt.meta["train"]
        seq_len = train["seq_len"] or ckpt.model.config.block_size
        rows.append({"name": name, "N": count_parameters(ckpt.model),
                     "D": train["steps"] * train["batch_size"] * seq_len, "val_loss": ckpt.meta["val_loss"],
                     "d_model": ckpt.model.config.d_model, "steps": train["steps"]})
    return sorted(rows, key=lambda r: (r["d_model"], r["steps"]))


def evaluate_loss(model: nn.Module, val_ids: torch.Tensor, seq_len: int = LADDER_SEQ_LEN,
                  n_batches: int = LADDER_EVAL_BATCHES, batch_size: int = LADDER_BATCH, seed: int = 1234) -> float:
    """Mean next-token loss over n_batches random (batch_size, seq_len) windows of val_ids (1-D ids) drawn from
    `seed`: bloomlib.training.train.evaluate. The defaults (the loop's evaluation seed, the ladder's 80 batches of
    4 x 64) are the windows on which a ladder checkpoint's meta["val_loss"] was measured."""
    val_ids = check_ids(model, val_ids)
    check_int("seq_len", seq_len, 1, model.config.block_size, " (at most the model's block_size)")
    check_int("n_batches", n_batches, 1)
    check_int("batch_size", batch_size, 1)
    if len(val_ids) < seq_len + 1:
        raise ValueError(f"val_ids must hold more than seq_len={seq_len} tokens, got {len(val_ids)}")
    return evaluate(model, val_ids, batch_size, seq_len, n_batches, seed=seed)
