"""Predictor graphs against independent NumPy computations of their formulas on synthetic trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.fx as fx

from graphcache.predictors import HISTORY, AdamsBashforth, Clock, FoCa, Newton, Predictor, Reuse, Taylor


def _module(predictor: Predictor, compute: bool, per_sample: bool = False) -> fx.GraphModule:
    g = fx.Graph()
    value = g.placeholder("value") if compute else None
    state = [g.placeholder(f"s{j}") for j in range(predictor.num_state())]
    clock = Clock(g.placeholder("step"), g.placeholder("history"), g.placeholder("n"))
    if per_sample:  # the clock as insert_cache_branch hands it to a [B, 3, 5] unit when each sample decides
        clock = clock.shaped(g, 3, torch.float64)
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
    history, n, forecasts = [0] * HISTORY, 0, {}
    for i in range(len(trajectory)):
        clock = (torch.tensor(i), torch.tensor(history), torch.tensor(n))
        if i in computed:
            state = list(compute_gm(torch.from_numpy(trajectory[i]), *state, *clock))
            history, n = [i, *history[:-1]], n + 1
        else:
            forecast, *state = cached_gm(*state, *clock)
            forecasts[i] = forecast.numpy()
    return forecasts


def run_per_sample(predictor: Predictor, trajectories: np.ndarray, schedules: list[list[int]]) -> dict[
        int, np.ndarray]:
    """Samples b of one batch, each with its own computed steps: per-sample clock and state, the batch's
    step computes when any sample does and keeps the other samples' state (as the compute branch does)."""
    compute_gm, cached_gm = _module(predictor, True, True), _module(predictor, False, True)
    batch, steps = len(schedules), trajectories.shape[1]
    state = [torch.zeros((batch, *trajectories.shape[2:]), dtype=torch.float64)
             for _ in range(predictor.num_state())]
    history, n = torch.zeros(batch, HISTORY, dtype=torch.int64), torch.zeros(batch, dtype=torch.int64)
    forecasts = {}
    for i in range(steps):
        mask = torch.tensor([i in s for s in schedules])
        clock = (torch.tensor(i), history, n)
        forecast, *cached_state = cached_gm(*state, *clock)
        forecasts[i] = forecast.numpy()
        if mask.any():
            fresh = compute_gm(torch.from_numpy(trajectories[:, i]), *state, *clock)
            view = mask.view(-1, 1, 1)
            state = [torch.where(view, f, c) for f, c in zip(fresh, cached_state, strict=True)]
            history = torch.where(mask[:, None], torch.cat([torch.full((batch, 1), i), history[:, :-1]], 1), history)
            n = n + mask.long()
        else:
            state = cached_state
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


def _lagrange(nodes: list[float], j: int) -> np.polynomial.Polynomial:
    """numpy's Lagrange basis polynomial L_j through ``nodes``."""
    others = [x for m, x in enumerate(nodes) if m != j]
    if not others:
        return np.polynomial.Polynomial([1.0])
    return np.polynomial.Polynomial.fromroots(others) / np.prod([nodes[j] - x for x in others])


def foca_numpy(trajectory: np.ndarray, computed: list[int], damp_after: float = 3.0) -> dict[int, np.ndarray]:
    """FoCa: BDF2 derivative (derivative of the quadratic through the last three computed values), forecast
    P = F_a + e dF_a, Heun calibration with the BDF2 derivative at i through (i, P), (a, F_a), (b, F_b)."""
    def derivative_at(x0: float, points: list[tuple[float, np.ndarray]]) -> np.ndarray:
        nodes = [p for p, _ in points]
        return sum(_lagrange(nodes, j).deriv()(x0) * f for j, (_, f) in enumerate(points))

    seen: list[tuple[int, np.ndarray]] = []
    d_a = np.zeros(trajectory.shape[1:])
    out = {}
    for i in range(len(trajectory)):
        if i in computed:
            seen.append((i, trajectory[i]))
            if len(seen) >= 3:
                d_a = derivative_at(i, seen[-3:])
            elif len(seen) == 2:
                d_a = (seen[1][1] - seen[0][1]) / (seen[1][0] - seen[0][0])
            continue
        (last, f_a) = seen[-1]
        e = i - last
        forecast = f_a + e * d_a
        local = derivative_at(i, [seen[-2], seen[-1], (i, forecast)]) if len(seen) >= 2 else d_a
        out[i] = forecast + min(e, damp_after) / 2 * (local - d_a)
    return out


def lagrange_forecasts(trajectory: np.ndarray, computed: list[int], count: int, weight) -> dict[int, np.ndarray]:
    """``sum_j weight(L_j, i) F(a_j)`` over the last ``count`` computed steps a_j (L_j numpy's Lagrange basis)."""
    seen: list[int] = []
    out = {}
    for i in range(len(trajectory)):
        if i in computed:
            seen.append(i)
            continue
        nodes = [float(x) for x in seen[-count:]]
        out[i] = sum(weight(_lagrange(nodes, j), i) * trajectory[int(x)] for j, x in enumerate(nodes))
    return out


def adams_bashforth_numpy(trajectory: np.ndarray, computed: list[int], order: int) -> dict[int, np.ndarray]:
    """AB-Cache: the mean over [i, i+1] of the polynomial through the last min(order, computed) values."""
    return lagrange_forecasts(trajectory, computed, order, lambda basis, i: basis.integ()(i + 1) - basis.integ()(i))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_foca_matches_numpy_formula(schedule):
    traj = _trajectory(degree=3)
    got = run_schedule(FoCa(), traj, SCHEDULES[schedule])
    want = foca_numpy(traj, SCHEDULES[schedule])
    assert got.keys() == want.keys()
    for i in got:  # float64: the closed-form BDF2 weights against numpy's Lagrange derivative
        np.testing.assert_allclose(got[i], want[i], rtol=1e-9, atol=1e-10)


def test_foca_forecasts_lines_exactly_and_damps_far_forecasts():
    line = _trajectory(degree=1)
    got = run_schedule(FoCa(), line, [0, 1, 2, 10])
    for i in range(3, 10):
        np.testing.assert_allclose(got[i], line[i], rtol=0, atol=1e-12)
    cubic = _trajectory(degree=3, steps=30)
    damped = run_schedule(FoCa(damp_after=3.0), cubic, [0, 1, 2, 12])
    undamped = run_schedule(FoCa(damp_after=1e9), cubic, [0, 1, 2, 12])
    for i in range(3, 6):  # e <= 3: no damping
        np.testing.assert_array_equal(damped[i], undamped[i])
    assert not np.array_equal(damped[8], undamped[8])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_adams_bashforth_matches_numpy_formula(order, schedule):
    traj = _trajectory(degree=3)
    got = run_schedule(AdamsBashforth(order=order), traj, SCHEDULES[schedule])
    want = adams_bashforth_numpy(traj, SCHEDULES[schedule], order)
    assert got.keys() == want.keys()
    for i in got:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
def test_adams_bashforth_gives_the_exact_step_mean_of_degree_order_minus_one(order):
    """A degree order-1 trajectory: the forecast is its exact mean over the sampler step [i, i+1]."""
    steps = 24
    coeffs = np.random.default_rng(1).normal(size=(order, 3, 5))

    def poly(x: float) -> np.ndarray:
        return sum(c * x**p for p, c in enumerate(coeffs))

    traj = np.stack([poly(i / steps) for i in range(steps)])
    got = run_schedule(AdamsBashforth(order=order), traj, [0, 1, 2, 3, 9, 15])
    for i, forecast in got.items():
        exact = sum(c * ((i + 1) ** (p + 1) - i ** (p + 1)) / (p + 1) / steps**p for p, c in enumerate(coeffs))
        np.testing.assert_allclose(forecast, exact, rtol=1e-9, atol=1e-10)


def test_adams_bashforth_weights_are_the_classic_ones_right_after_a_computed_step():
    from graphcache.predictors.ode import _lagrange_means

    g = fx.Graph()
    e, offsets = g.placeholder("e"), [g.placeholder(f"d{j}") for j in range(3)]
    g.output((tuple(_lagrange_means(g, offsets[:2], e)), tuple(_lagrange_means(g, offsets, e))))
    ab2, ab3 = fx.GraphModule(torch.nn.Module(), g)(*torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    np.testing.assert_allclose(torch.stack(ab2).numpy(), [3 / 2, -1 / 2], rtol=1e-12)
    np.testing.assert_allclose(torch.stack(ab3).numpy(), [23 / 12, -16 / 12, 5 / 12], rtol=1e-12)


@pytest.mark.parametrize("predictor", [Taylor(order=2), Newton(order=3), FoCa(), AdamsBashforth(order=3)],
                         ids=lambda p: p.name)
def test_per_sample_clocks_give_each_sample_its_own_forecast(predictor):
    """Three samples with different computed steps in one batch: each forecast equals the sample's alone."""
    schedules = [[0, 1, 2, 6, 10, 14], [0, 3, 4, 9, 13], [0, 1, 5, 6, 7, 12]]
    trajectories = np.stack([_trajectory(degree=3, steps=16, seed=s) for s in range(3)])
    batch = run_per_sample(predictor, trajectories, schedules)
    for b, schedule in enumerate(schedules):
        alone = run_schedule(predictor, trajectories[b], schedule)
        for i, forecast in alone.items():
            np.testing.assert_allclose(batch[i][b], forecast, rtol=1e-12, atol=1e-12)


def newton_numpy(trajectory: np.ndarray, computed: list[int], order: int) -> dict[int, np.ndarray]:
    """The polynomial through the last min(order + 1, computed) values, evaluated at the cached step."""
    return lagrange_forecasts(trajectory, computed, order + 1, lambda basis, i: basis(i))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_newton_matches_numpy_interpolation(order, schedule):
    traj = _trajectory(degree=4)
    got = run_schedule(Newton(order=order), traj, SCHEDULES[schedule])
    want = newton_numpy(traj, SCHEDULES[schedule], order)
    for i in got:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("degree", [2, 3])
def test_newton_forecasts_its_degree_exactly_where_published_taylor_does_not(degree):
    """Uneven spacing (warm-up, then every 5th step): Newton of order d is exact on degree-d polynomials
    (float64, atol 1e-9) once d + 1 steps were computed; TaylorSeer's last-gap differences are not."""
    traj = _trajectory(degree=degree)
    schedule = SCHEDULES["warmup-then-5"]
    newton = run_schedule(Newton(order=degree), traj, schedule)
    taylor = run_schedule(Taylor(order=degree), traj, schedule)
    after = [i for i in newton if i > schedule[degree]]
    for i in after:
        np.testing.assert_allclose(newton[i], traj[i], rtol=0, atol=1e-9)
    assert max(np.abs(taylor[i] - traj[i]).max() for i in after) > 1e-3


def test_from_step_reuses_before_its_start_and_forecasts_after():
    from graphcache.predictors import FromStep

    traj = _trajectory(degree=2)
    schedule = SCHEDULES["uniform-4"]
    gated = run_schedule(FromStep(Taylor(order=1), start=10), traj, schedule)
    taylor = run_schedule(Taylor(order=1), traj, schedule)
    for i, forecast in gated.items():
        want = taylor[i] if i >= 10 else traj[max(c for c in schedule if c < i)]
        np.testing.assert_array_equal(forecast, want)
