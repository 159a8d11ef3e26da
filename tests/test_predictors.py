"""Predictor graphs against independent NumPy computations of their formulas on synthetic trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.fx as fx

from graphcache.predictors import Clock, Predictor, Reuse, Taylor


def _module(predictor: Predictor, compute: bool) -> fx.GraphModule:
    g = fx.Graph()
    value = g.placeholder("value") if compute else None
    state = [g.placeholder(f"s{j}") for j in range(predictor.num_state())]
    clock = Clock(g.placeholder("step"), g.placeholder("last"), g.placeholder("n"))
    if compute:
        assert value is not None
        g.output(tuple(predictor.on_compute(g, value, state, clock)))
    else:
        forecast, new_state = predictor.on_cached(g, state, clock)
        g.output((forecast, *new_state))
    return fx.GraphModule(torch.nn.Module(), g)


def run_schedule(predictor: Predictor, trajectory: np.ndarray, computed: list[int]) -> dict[int, np.ndarray]:
    """Feed F(i) at computed steps, return the forecasts at the other steps (graph-built predictor)."""
    compute_gm, cached_gm = _module(predictor, True), _module(predictor, False)
    state = [torch.zeros(trajectory.shape[1:], dtype=torch.float64) for _ in range(predictor.num_state())]
    last, n, forecasts = 0, 0, {}
    for i in range(len(trajectory)):
        clock = (torch.tensor(i), torch.tensor(last), torch.tensor(n))
        if i in computed:
            state = list(compute_gm(torch.from_numpy(trajectory[i]), *state, *clock))
            last, n = i, n + 1
        else:
            forecast, *state = cached_gm(*state, *clock)
            forecasts[i] = forecast.numpy()
    return forecasts


def taylorseer_numpy(trajectory: np.ndarray, computed: list[int], order: int) -> dict[int, np.ndarray]:
    """TaylorSeer as published: divided differences over the last computed steps, Taylor series forward."""
    factors: list[np.ndarray] = []
    history: list[int] = []
    out = {}
    for i in range(len(trajectory)):
        if i in computed:
            new = [trajectory[i]]
            for j in range(order):
                if j < len(factors) and history:
                    new.append((new[j] - factors[j]) / (i - history[-1]))
                else:
                    break
            factors = new
            history.append(i)
        else:
            k = i - history[-1]
            out[i] = sum(f * k**j / math.factorial(j) for j, f in enumerate(factors))
    return out


def _trajectory(degree: int, steps: int = 24, seed: int = 0) -> np.ndarray:
    coeffs = np.random.default_rng(seed).normal(size=(degree + 1, 3, 5))
    x = np.arange(steps, dtype=np.float64) / steps
    return np.stack([sum(c * xi**p for p, c in enumerate(coeffs)) for xi in x])


SCHEDULES = {"uniform-4": [0, 4, 8, 12, 16, 20], "warmup-then-5": [0, 1, 2, 7, 12, 17, 22]}


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_taylor_matches_numpy_formula(order, schedule):
    traj = _trajectory(degree=3)
    got = run_schedule(Taylor(order=order), traj, SCHEDULES[schedule])
    want = taylorseer_numpy(traj, SCHEDULES[schedule], order)
    assert got.keys() == want.keys()
    for i in got:  # float64 graphs: same formula, rounding only
        np.testing.assert_allclose(got[i], want[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_first_order_forecasts_lines_exactly(schedule):
    traj = _trajectory(degree=1)
    got = run_schedule(Taylor(order=1), traj, SCHEDULES[schedule])
    for i, forecast in got.items():
        if i > SCHEDULES[schedule][1]:  # once two computed steps exist
            np.testing.assert_allclose(forecast, traj[i], rtol=0, atol=1e-12)


def test_reuse_returns_the_last_computed_value():
    traj = _trajectory(degree=2)
    got = run_schedule(Reuse(), traj, [0, 3, 6])
    for i, forecast in got.items():
        np.testing.assert_array_equal(forecast, traj[max(c for c in (0, 3, 6) if c < i)])


def test_higher_order_beats_reuse_on_smooth_trajectories():
    traj = _trajectory(degree=2, steps=40)
    schedule = list(range(0, 40, 4))
    reuse = run_schedule(Reuse(), traj, schedule)
    taylor = run_schedule(Taylor(order=2), traj, schedule)
    err = {name: np.mean([np.abs(f[i] - traj[i]).mean() for i in f if i > 8]) for name, f in
           (("reuse", reuse), ("taylor", taylor))}
    assert err["taylor"] < 0.2 * err["reuse"]


def hicache_numpy(trajectory: np.ndarray, computed: list[int], order: int, sigma: float) -> dict[int, np.ndarray]:
    """HiCache: TaylorSeer's differences, Hermite-scaled terms (numpy's physicists' Hermite polynomials)."""
    from numpy.polynomial.hermite import hermval

    taylor = taylorseer_numpy(trajectory, computed, order)  # for the schedule only
    factors: list[np.ndarray] = []
    last = 0
    out = {}
    for i in range(len(trajectory)):
        if i in computed:
            new = [trajectory[i]]
            for j in range(order):
                if j < len(factors) and i > 0:
                    new.append((new[j] - factors[j]) / (i - last))
                else:
                    break
            factors, last = new, i
        else:
            k = i - last
            out[i] = factors[0] + sum(
                f / math.factorial(j) * sigma**j * hermval(sigma * k, [0] * j + [1])
                for j, f in enumerate(factors) if j >= 1
            )
    assert out.keys() == taylor.keys()
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
def test_hermite_matches_numpy_formula(order):
    from graphcache.predictors import Hermite

    traj = _trajectory(degree=3)
    schedule = SCHEDULES["warmup-then-5"]
    got = run_schedule(Hermite(order=order, sigma=0.71), traj, schedule)
    want = hicache_numpy(traj, schedule, order, 0.71)
    for i in got:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-10, atol=1e-12)
