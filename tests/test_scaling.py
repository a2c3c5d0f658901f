"""bloomlib.analysis.scaling against references written here: brute-force float64 minimisation (a log grid, then
golden-section search), the published tokens-per-parameter facts, synthetic points drawn from known constants,
parameter counts from the tensors themselves, and the shipped lesson-05 ladder's own weights and command."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bloomlib import GPT, GPTConfig
from bloomlib.analysis.scaling import (BESIROGLU_2024, HOFFMANN_2022, ChinchillaFit, bootstrap_fits,
                                       chinchilla_loss, compute_optimal, count_parameters, evaluate_loss,
                                       fit_chinchilla, fit_intervals, isoflop_curve, ladder_table, training_cost)
from bloomlib.training import zoo
from test_zoo import rebuild_with_recorded_command

# 15 points over 3 decades of N and of D (a 5 x 3 grid, like the ladder's)
GRID_N = np.repeat(np.geomspace(1e7, 1e10, 5), 3)
GRID_D = np.tile(np.geomspace(1e9, 1e12, 3), 5)


def brute_force_optimum(fit: ChinchillaFit, C: float) -> float:
    """argmin over N of E + A N^-alpha + B (C/6N)^-beta in float64: a 20001-point log grid, then golden-section
    search on log N inside the grid cell pair around the best point."""
    def loss(log_n: float) -> float:
        n = math.exp(log_n)
        return fit.E + fit.A * n ** -fit.alpha + fit.B * (C / (6 * n)) ** -fit.beta

    grid = np.linspace(0.0, math.log(C / 6), 20001)  # 1 parameter .. 1 token
    values = [loss(g) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(x1) < loss(x2):
            hi = x2
        else:
            lo = x1
    return math.exp((lo + hi) / 2)


@pytest.mark.parametrize("fit", [HOFFMANN_2022, BESIROGLU_2024, ChinchillaFit(E=0.5, A=20.0, B=3e4, alpha=0.9,
                                                                               beta=0.2)])
@pytest.mark.parametrize("C", [1e15, 1e21, 5.76e23])
def test_compute_optimal_is_the_minimum_along_the_isoflop(fit, C):
    n_opt, d_opt = compute_optimal(C, fit.E, fit.A, fit.B, fit.alpha, fit.beta)
    assert n_opt == pytest.approx(brute_force_optimum(fit, C), rel=1e-5)
    assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-12)
    assert fit.compute_optimal(C) == (n_opt, d_opt)


def test_tokens_per_parameter_as_published():
    """Chinchilla's budget, 5.76e23 FLOPs: the printed approach-3 constants imply ~93 tokens per parameter
    (Besiroglu et al. 2024), their refit ~20 (as approaches 1 and 2); at 1e21 FLOPs ~50 and ~22."""
    def tokens_per_param(fit, C):
        n, d = fit.compute_optimal(C)
        return d / n

    assert 85 <= tokens_per_param(HOFFMANN_2022, 5.76e23) <= 100
    assert 15 <= tokens_per_param(BESIROGLU_2024, 5.76e23) <= 22
    assert 40 <= tokens_per_param(HOFFMANN_2022, 1e21) <= 60
    assert 18 <= tokens_per_param(BESIROGLU_2024, 1e21) <= 26


def test_chinchilla_loss_broadcasts_in_float64():
    fit = BESIROGLU_2024
    N, D = np.geomspace(1e6, 1e9, 4)[:, None], np.geomspace(1e8, 1e12, 3)[None, :]
    got = chinchilla_loss(N, D, fit.E, fit.A, fit.B, fit.alpha, fit.beta)
    tN, tD = torch.tensor(N, dtype=torch.float64), torch.tensor(D, dtype=torch.float64)
    ref = fit.E + fit.A * torch.exp(-fit.alpha * tN.log()) + fit.B * torch.exp(-fit.beta * tD.log())
    assert got.shape == (4, 3) and np.allclose(got, ref.numpy(), rtol=1e-13, atol=0)
    assert isinstance(fit.loss(7e10, 1.4e12), float)
    assert fit.loss(1e30, 1e30) == pytest.approx(fit.E, abs=1e-6)  # the irreducible loss


def test_isoflop_curve_is_the_loss_along_the_budget_and_bottoms_at_the_optimum():
    fit, C = HOFFMANN_2022, 1e21
    N = np.geomspace(1e8, 1e11, 3001)
    curve = isoflop_curve(fit, C, N)
    ref = [fit.E + fit.A / n ** fit.alpha + fit.B / (C / (6 * n)) ** fit.beta for n in N.tolist()]
    assert np.allclose(curve, ref, rtol=1e-13, atol=0)
    n_opt, _ = fit.compute_optimal(C)
    assert N[np.argmin(curve)] == pytest.approx(n_opt, rel=0.01)  # grid spacing 0.23 %


@pytest.mark.parametrize("true", [BESIROGLU_2024, ChinchillaFit(E=1.2, A=80.0, B=900.0, alpha=0.25, beta=0.3)])
def test_fit_recovers_the_constants_of_noise_free_points(true):
    fit = fit_chinchilla(GRID_N, GRID_D, true.loss(GRID_N, GRID_D))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(true, name), rel=1e-3), name


def test_bootstrap_intervals_hold_the_true_constants_of_noisy_points():
    true = HOFFMANN_2022
    noisy = true.loss(GRID_N, GRID_D) * np.exp(np.random.default_rng(0).normal(0, 0.01, len(GRID_N)))
    fits = bootstrap_fits(GRID_N, GRID_D, noisy, n_boot=40, seed=1)
    assert len(fits) == 40 and len(set(fits)) > 30  # resamples differ
    intervals = fit_intervals(fits, q=(0.025, 0.975))
    for name, (low, high) in intervals.items():
        assert low <= getattr(true, name) <= high, (name, low, high)
    a_low, a_high = intervals["alpha"]
    assert a_high - a_low < 0.2  # three decades of N pin alpha down
    assert bootstrap_fits(GRID_N, GRID_D, noisy, n_boot=3, seed=1) == fits[:3]  # seeded


def test_huber_fit_barely_moves_for_one_outlier_where_least_squares_does():
    true = BESIROGLU_2024
    clean = true.loss(GRID_N, GRID_D)
    spoiled = clean.copy()
    spoiled[7] *= 1.3
    kept = np.arange(len(clean)) != 7

    def worst_error(fit):  # on the 14 clean points, in log loss
        return np.abs(np.log(fit.loss(GRID_N, GRID_D)) - np.log(clean))[kept].max()

    huber = worst_error(fit_chinchilla(GRID_N, GRID_D, spoiled))  # delta 1e-3: nearly L1 past 1e-3
    least_squares = worst_error(fit_chinchilla(GRID_N, GRID_D, spoiled, delta=10.0))  # every |r| < 10: pure L2
    assert huber < 2e-3 and least_squares > 10 * huber, (huber, least_squares)


def test_bad_input_names_the_argument():
    N, D, L = GRID_N, GRID_D, HOFFMANN_2022.loss(GRID_N, GRID_D)
    with pytest.raises(ValueError, match="N must be finite and positive"):
        fit_chinchilla(-N, D, L)
    with pytest.raises(ValueError, match="L must be finite and positive"):
        fit_chinchilla(N, D, np.where(np.arange(15) == 3, np.nan, L))
    with pytest.raises(ValueError, match="same length.*'D': 14"):
        fit_chinchilla(N, D[:-1], L)
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_chinchilla(N[:4], D[:4], L[:4])
    with pytest.raises(ValueError, match="delta"):
        fit_chinchilla(N, D, L, delta=0.0)
    with pytest.raises(ValueError, match="starts"):
        fit_chinchilla(N, D, L, starts=[[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_fits(N, D, L, n_boot=0)
    with pytest.raises(ValueError, match="fits"):
        fit_intervals([])
    with pytest.raises(ValueError, match="C must be finite and positive"):
        compute_optimal(-1.0, *dataclasses.astuple(HOFFMANN_2022))
    with pytest.raises(ValueError, match="D must be finite and positive"):
        chinchilla_loss(1e9, 0.0, *dataclasses.astuple(HOFFMANN_2022))
    with pytest.raises(ValueError, match="utilization"):
        training_cost(1e21, utilization=0.0)


def test_training_cost():
    # 1e15 FLOP/s at 50 % for one hour is 1.8e18 FLOPs
    cost = training_cost(1.8e18, peak_flops=1e15, utilization=0.5, dollars_per_gpu_hour=3.0)
    assert cost["gpu_hours"] == pytest.approx(1.0, rel=1e-12) and cost["dollars"] == pytest.approx(3.0, rel=1e-12)
    # the defaults: an H100 at 40 % of 989 TFLOP/s does 1.424e18 FLOPs an hour
    assert training_cost(989e12 * 0.4 * 3600)["gpu_hours"] == pytest.approx(1.0, rel=1e-12)


def test_count_parameters_counts_tied_weights_once_and_embeddings_in():
    config = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, d_model=16, tie_weights=True)
    tied = GPT(config)
    named = list(tied.named_parameters(remove_duplicate=False))
    unique = {p.data_ptr(): p.numel() for _, p in named}
    assert len(unique) == len(named) - 1  # the head is the token embedding
    assert count_parameters(tied) == sum(unique.values())
    untied = GPT(dataclasses.replace(config, tie_weights=False))
    assert count_parameters(untied) - count_parameters(tied) == 97 * 16  # the output head, once


# --- the lesson-05 ladder ---------------------------------------------------------------------------------------

LADDER = [f"lesson05/{s.name}" for s in zoo.FAMILIES["lesson05"] if s.name.startswith("ladder/")]
shipped = pytest.mark.skipif(not set(LADDER) <= set(zoo.shipped_models()),
                             reason="the lesson-05 ladder is not built (python -m bloomlib.training.zoo lesson05 "
                                    "--out bloomlib/assets/lesson05 --only ladder)")


@shipped
def test_ladder_table_is_the_zoo_table_and_small():
    rows = ladder_table()
    assert [r["name"] for r in rows] == sorted(LADDER, key=lambda n: (zoo.zoo_model(n).config.d_model,
                                                                         zoo.zoo_model(n).train.steps))
    for row in rows:
        spec = zoo.zoo_model(row["name"])
        model = GPT(spec.config)
        assert row["N"] == sum(p.numel() for p in model.parameters())  # untied: every tensor is its own
        assert row["D"] == spec.train.steps * spec.train.batch_size * spec.train.seq_len
        assert (row["d_model"], row["steps"]) == (spec.config.d_model, spec.train.steps)
    _, train_ids, _ = zoo.corpus_splits()
    assert max(r["D"] for r in rows) < len(train_ids)  # under one epoch
    files = [f for f in (zoo.ASSETS / "lesson05" / "ladder").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 4_000_000
    assert {f.parent.relative_to(zoo.ASSETS).as_posix() for f in files} == set(LADDER)


@shipped
def test_ladder_loss_falls_with_size_at_every_budget_and_with_budget_at_every_size():
    rows = ladder_table()
    loss = {(r["N"], r["D"]): r["val_loss"] for r in rows}
    sizes, budgets = sorted({n for n, _ in loss}), sorted({d for _, d in loss})
    assert len(sizes) == 5 and len(budgets) == 3 and len(loss) == 15
    for d in budgets:
        column = [loss[n, d] for n in sizes]
        assert all(a > b for a, b in zip(column, column[1:])), (d, column)
    for n in sizes:
        row = [loss[n, d] for d in budgets]
        assert all(a > b for a, b in zip(row, row[1:])), (n, row)


@shipped
def test_evaluate_loss_reproduces_the_recorded_validation_loss():
    _, _, val_ids = zoo.corpus_splits()
    for name in (LADDER[0], LADDER[-1]):
        ckpt = zoo.load_zoo_model(name)
        assert evaluate_loss(ckpt.model, val_ids) == pytest.approx(ckpt.meta["val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="seq_len"):
        evaluate_loss(ckpt.model, val_ids, seq_len=ckpt.model.config.block_size + 1)


@shipped
@pytest.mark.slow
def test_recorded_command_rebuilds_the_smallest_ladder_model(tmp_path):
    """The smallest model on the fewest steps, rebuilt by its recorded command (same thread count): the same
    weights (on one machine the CPU kernels are deterministic)."""
    name = min(LADDER, key=lambda n: (zoo.zoo_model(n).config.d_model, zoo.zoo_model(n).train.steps))
    shipped_weights, rebuilt = rebuild_with_recorded_command(name, tmp_path)
    for key in shipped_weights:
        assert torch.allclose(shipped_weights[key], rebuilt[key], rtol=0, atol=1e-6), key
