"""The SGLD LLC estimator: known answers, diagnostics, runs, caching, calibration, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import import_extra
from groklab.analysis import llc
from groklab.analysis.llc import LLCSettings, estimate_llc
from groklab.analysis.llc import calibration as llc_calibration
from groklab.errors import ConfigError


def _poly_loss(ks: torch.Tensor):
    def loss(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return (w ** (2 * ks)).sum()

    return loss


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    ("ks", "epsilon"),
    [
        ((1,), 2e-4),  # regular: lambda = 1/2
        ((2,), 1e-3),  # 1/4
        ((3,), 2e-3),  # 1/6
        ((1, 1, 1, 1), 2e-4),  # 2
        ((1, 2, 3, 1, 2), 1e-3),  # 1/2 + 1/4 + 1/6 + 1/2 + 1/4 = 5/3
    ],
)
def test_polynomial_known_answer(ks: tuple[int, ...], epsilon: float) -> None:
    """L(w) = sum_i w_i^(2 k_i) has learning coefficient sum_i 1/(2 k_i).

    With no localisation the estimator is exact up to Monte Carlo and discretisation error:
    for a density proportional to exp(-nbeta w^(2k)), E[nbeta w^(2k)] = 1/(2k). A quadratic
    term is biased up by about eps * nbeta / 2; flatter terms need a larger step to mix.
    """
    k = torch.tensor(ks)
    truth = sum(1 / (2 * ki) for ki in ks)
    s = LLCSettings(
        epsilon=epsilon,
        gamma=0.0,
        nbeta=100.0,
        chains=256,
        draws=600,
        burnin=300,
        batch_size=None,
    )
    res = estimate_llc(_poly_loss(k), torch.zeros(len(ks), dtype=torch.float64), n=1000, settings=s)
    print(f"polynomial k={ks}: LLC {res.llc:.4f} ± {res.llc_std:.3f} vs {truth:.4f}")
    assert res.init_loss == 0.0
    assert res.nbeta == 100.0
    assert abs(res.llc - truth) < 0.1 * truth, (res.llc, truth)
    assert not res.diverged and res.warnings == ()
    assert res.trace.shape == (256, 900)
    assert res.frac_below_init == 0.0


def test_polynomial_with_localisation_and_n_over_log_n() -> None:
    """nbeta defaults to n / log n; a weak localisation barely moves the answer."""
    k = torch.tensor([1, 2])
    s = LLCSettings(epsilon=2e-4, gamma=1.0, chains=128, draws=600, burnin=200, batch_size=None)
    res = estimate_llc(_poly_loss(k), torch.zeros(2, dtype=torch.float64), n=2000, settings=s)
    print(f"polynomial k=(1, 2), gamma 1, nbeta n/log n: LLC {res.llc:.4f} vs 0.75")
    assert res.nbeta == pytest.approx(2000 / math.log(2000))
    assert abs(res.llc - 0.75) < 0.075, res.llc


def _linreg(n: int = 1000, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64)
    y = y + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)

    def loss(p: dict[str, torch.Tensor], rows: torch.Tensor | None) -> torch.Tensor:
        xb, yb = (x, y) if rows is None else (x[rows], y[rows])
        pred = xb @ p["w"] + p["b"]
        return 0.5 * ((yb - pred) ** 2).mean()

    # w* = the least-squares fit with intercept, the exact minimiser of the loss
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(xa, y.unsqueeze(1)).solution.squeeze(1)
    params = {"w": sol[:d].clone(), "b": sol[d].clone()}
    return loss, params, n, d + 1


@pytest.mark.parametrize("batch_size", [None, 128])
def test_linear_regression_is_d_over_2(batch_size: int | None) -> None:
    """A regular model with d parameters has lambda = d/2 (minibatch and full batch)."""
    loss, params, n, d = _linreg()
    s = LLCSettings(
        epsilon=2e-4, gamma=0.0, chains=32, draws=400, burnin=100, batch_size=batch_size
    )
    res = estimate_llc(loss, params, n=n, settings=s)
    print(f"linear regression, batch {batch_size}: LLC {res.llc:.4f} vs d/2 = {d / 2}")
    assert res.n_params == d
    assert abs(res.llc - d / 2) < 0.1 * d / 2, res.llc
    assert 0.8 < res.convergence_ratio < 1.25


def _deep_linear(m: int, h1: int, h2: int, n_out: int, rank: int, *, n: int = 2000, seed: int = 0):
    """A 3-layer linear network ``x -> W3 W2 W1 x`` at a true parameter of rank ``rank``:
    ``W1`` [h1, m] of rank ``rank``, ``W2`` [h2, h1] and ``W3`` [n_out, h2] injective
    (orthonormal columns). Squared error on Gaussian inputs, noiseless targets ``C x`` with
    ``C = W3 W2 W1``, written through the input covariance (the same loss as the mean over
    the ``n`` rows). The loss is batched over chains (``estimate_llc(..., batched=True)``)."""
    g = torch.Generator().manual_seed(seed)

    def orthonormal_columns(rows: int, cols: int) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
        return q

    u, s, vh = torch.linalg.svd(orthonormal_columns(m, h1).T, full_matrices=False)
    s[rank:] = 0
    params = {
        "W1": (u * s) @ vh,
        "W2": orthonormal_columns(h2, h1),
        "W3": orthonormal_columns(n_out, h2),
    }
    c = params["W3"] @ params["W2"] @ params["W1"]
    x = torch.randn(n, m, generator=g, dtype=torch.float64)
    cov = x.T @ x / n

    def loss(p: dict[str, torch.Tensor], rows: torch.Tensor | None) -> torch.Tensor:
        # batched over chains: weights [chain, ...] -> losses [chain]
        err = p["W3"] @ p["W2"] @ p["W1"] - c  # [chain, out, in]
        return 0.5 * torch.einsum("coi,ij,coj->c", err, cov, err)

    return loss, params, n


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_deep_linear_network_of_known_rank(rank: int) -> None:
    """A deep linear network at a true parameter of rank r has a known, singular LLC.

    With ``W3 W2`` injective the product ``P = W3 W2`` [out, h1] is a submersion of the upper
    layers, so locally the model is the 2-layer reduced-rank regression ``P W1`` with ``P``
    injective and ``W1`` of rank r. Its zero set is a smooth manifold of codimension
    ``h1 m - h1 r + out r`` and the loss is non-degenerate across it, so
    ``lambda = (h1 m - h1 r + out r) / 2`` (Aoyagi & Watanabe 2005's formula for the case
    ``m + h1 < out + r``) — far below ``d / 2``. The test checks this codimension as the rank
    of the Jacobian of ``w -> W3 W2 W1`` at ``w*`` and then the estimate against it.
    """
    m, h1, h2, n_out = 4, 3, 4, 6
    loss, params, n = _deep_linear(m, h1, h2, n_out, rank)
    truth = (h1 * m - h1 * rank + n_out * rank) / 2
    names = ("W1", "W2", "W3")
    shapes = [params[k].shape for k in names]
    sizes = [math.prod(sh) for sh in shapes]

    def product(flat: torch.Tensor) -> torch.Tensor:
        w1, w2, w3 = (t.view(sh) for t, sh in zip(flat.split(sizes), shapes, strict=True))
        return (w3 @ w2 @ w1).reshape(-1)

    w_star = torch.cat([params[k].reshape(-1) for k in names])
    jac = torch.autograd.functional.jacobian(product, w_star)
    assert torch.linalg.matrix_rank(jac).item() / 2 == truth
    s = LLCSettings(
        epsilon=3e-5, gamma=1.0, nbeta=1000.0, chains=64, draws=600, burnin=200, batch_size=None
    )
    res = estimate_llc(loss, params, n=n, settings=s, batched=True)
    print(
        f"deep linear network rank {rank} (d = {res.n_params}): LLC {res.llc:.3f} ± "
        f"{res.llc_std:.3f} vs {truth}"
    )
    assert res.n_params == sum(sizes) == 48
    assert abs(res.llc - truth) < 0.1 * truth, (res.llc, truth)
    assert not res.diverged and res.warnings == ()


def _quadratic(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return (w**2).sum()


def _quadratic_llc(gamma: float, *, d: int, nbeta: float) -> float:
    """LLC of L = |w|^2 (curvature h = 2 nbeta per direction) under the prior N(w*, 1/gamma):
    each direction gives (1/2) h / (h + gamma)."""
    h = 2 * nbeta
    return d / 2 * h / (h + gamma)


def test_gamma_check_is_stable_on_known_answers() -> None:
    """Where the loss, not the prior, confines the draws (gamma << nbeta h), the estimate is
    the known one and barely moves over a factor 9 of gamma: the check says γ-stable."""
    s = LLCSettings(
        epsilon=2e-4, gamma=2.0, nbeta=100.0, chains=64, draws=600, burnin=200, batch_size=None
    )
    res = estimate_llc(_quadratic, torch.zeros(4, dtype=torch.float64), n=1000, settings=s)
    gc = res.gamma_check
    print(f"|w|^2, gamma 2: LLC {res.llc:.3f} vs 2; {gc.describe()}")
    assert abs(res.llc - 2.0) < 0.1 * 2.0
    assert gc is not None and gc.factor == 3.0 and gc.chains == 32
    assert (gc.gamma_lo, gc.gamma_hi) == pytest.approx((2 / 3, 6.0))
    assert abs(gc.elasticity) < 0.05 and gc.elasticity_se < 0.05
    assert not gc.sensitive and res.warnings == ()
    # a flatter known answer (w^4 + w^2: lambda 1/4 + 1/2) is γ-stable too
    k = torch.tensor([2, 1])
    s4 = replace(s, epsilon=1e-3, gamma=1.0)
    res4 = estimate_llc(_poly_loss(k), torch.zeros(2, dtype=torch.float64), n=1000, settings=s4)
    print(f"w^4 + w^2, gamma 1: LLC {res4.llc:.3f} vs 0.75; {res4.gamma_check.describe()}")
    assert abs(res4.llc - 0.75) < 0.075
    assert not res4.gamma_check.sensitive and res4.warnings == ()


def test_gamma_check_flags_an_estimate_set_by_the_localisation() -> None:
    """gamma >> nbeta h: the prior sets the draws' spread, the estimate falls as 1/gamma and
    the check flags it, with the elasticity of the exact answer -gamma / (h + gamma)."""
    s = LLCSettings(
        epsilon=3e-5, gamma=2000.0, nbeta=100.0, chains=64, draws=800, burnin=300, batch_size=None
    )
    res = estimate_llc(_quadratic, torch.zeros(4, dtype=torch.float64), n=1000, settings=s)
    gc = res.gamma_check
    exact = math.log(
        _quadratic_llc(6000.0, d=4, nbeta=100.0) / _quadratic_llc(2000 / 3, d=4, nbeta=100.0)
    ) / (2 * math.log(3))
    print(f"|w|^2, gamma 2000: LLC {res.llc:.3f}; {gc.describe()}; exact {exact:.3f}")
    assert res.llc == pytest.approx(_quadratic_llc(2000.0, d=4, nbeta=100.0), rel=0.1)
    assert gc.llc_lo > res.llc > gc.llc_hi > 0
    assert gc.elasticity == pytest.approx(exact, abs=0.1)
    assert gc.sensitive
    assert any(w.startswith("γ-sensitive") and "localisation" in w for w in res.warnings)
    assert res.to_dict()["gamma_check"]["sensitive"] is True


def test_gamma_check_settings_and_costs() -> None:
    """Off at gamma = 0 or gamma_check=None; a side estimate <= 0 counts as sensitive; the
    check's chains and factor are settings that do not change the cache key."""
    k = torch.tensor([1])
    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=50.0, chains=4, draws=30, burnin=10, batch_size=None
    )
    assert estimate_llc(_poly_loss(k), torch.zeros(1), n=100, settings=s).gamma_check is None
    s = replace(s, gamma=1.0, gamma_check=None)
    assert estimate_llc(_poly_loss(k), torch.zeros(1), n=100, settings=s).gamma_check is None
    on = replace(s, gamma_check=2.0, gamma_check_chains=3)
    a = estimate_llc(_poly_loss(k), torch.zeros(1, dtype=torch.float64), n=100, settings=s)
    b = estimate_llc(_poly_loss(k), torch.zeros(1, dtype=torch.float64), n=100, settings=on)
    # the check runs on its own seed: the estimate itself is the same with or without it
    np.testing.assert_array_equal(a.trace, b.trace)
    assert b.gamma_check.chains == 3 and b.gamma_check.gamma_hi == 2.0
    assert (
        s.key()
        == on.key()
        == LLCSettings.from_dict(
            {k: v for k, v in s.to_dict().items() if not k.startswith("gamma_check")}
        ).key()
    )
    assert LLCSettings(chains=5).check_chains == 2 and LLCSettings(chains=1).check_chains == 1
    # starting away from the minimum, the side estimates are negative: sensitive, no number
    dip = estimate_llc(
        _poly_loss(k), torch.ones(1, dtype=torch.float64), n=100, settings=replace(on, gamma=0.1)
    )
    assert dip.gamma_check.sensitive and math.isnan(dip.gamma_check.elasticity)
    assert LLCSettings(gamma_check=0).gamma_check is None  # 0 = off, as TOML has no None
    with pytest.raises(ConfigError, match="gamma_check"):
        LLCSettings(gamma_check=1.0)
    with pytest.raises(ConfigError, match="gamma_check_chains"):
        LLCSettings(gamma_check_chains=0)


# --------------------------------------------------------------------------- estimator


def test_seeded_and_reproducible() -> None:
    k = torch.tensor([1, 2])
    s = LLCSettings(
        epsilon=1e-3, gamma=1.0, nbeta=50.0, chains=4, draws=50, burnin=10, batch_size=None, seed=3
    )
    a = estimate_llc(_poly_loss(k), torch.zeros(2, dtype=torch.float64), n=100, settings=s)
    b = estimate_llc(_poly_loss(k), torch.zeros(2, dtype=torch.float64), n=100, settings=s)
    c = estimate_llc(
        _poly_loss(k), torch.zeros(2, dtype=torch.float64), n=100, settings=replace(s, seed=4)
    )
    np.testing.assert_array_equal(a.trace, b.trace)
    assert a.llc == b.llc
    assert not np.array_equal(a.trace, c.trace)


def test_params_not_modified_and_burnin_discarded() -> None:
    w = torch.full((3,), 0.0, dtype=torch.float64)
    k = torch.tensor([1, 1, 1])
    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=50.0, chains=2, draws=30, burnin=20, batch_size=None
    )
    res = estimate_llc(_poly_loss(k), w, n=100, settings=s)
    assert torch.equal(w, torch.zeros(3, dtype=torch.float64))
    assert res.trace.shape == (2, 50)
    assert res.draws_trace.shape == (2, 30)
    # the estimate uses the draws only
    expected = res.nbeta * (res.trace[:, 20:].mean(axis=1) - res.init_loss)
    np.testing.assert_allclose(res.llc_per_chain, expected)
    assert res.llc == pytest.approx(expected.mean())
    assert res.llc_std == pytest.approx(expected.std(ddof=1))


def test_chains_are_vectorised_not_sequential() -> None:
    """The loss function is called once per SGLD step for all chains together (vmapped)."""
    calls = []
    k = torch.tensor([1])

    def loss(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        calls.append(1)
        return (w ** (2 * k)).sum()

    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=10.0, chains=16, draws=20, burnin=5, batch_size=None
    )
    estimate_llc(loss, torch.zeros(1, dtype=torch.float64), n=10, settings=s)
    # one call for L(w*), one traced call per step
    assert len(calls) == 1 + 25


def test_minibatches_are_per_chain_shuffles() -> None:
    """Each step scores `batch_size` rows per chain; each epoch covers every row once, in a
    different order for every chain. The loss sum_{rows} 2^row records the exact row set."""
    n, m, chains = 40, 10, 3
    code = 2.0 ** torch.arange(n, dtype=torch.float64)

    def loss(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        picked = code if rows is None else code[rows]
        return picked.sum() + 0.0 * (w**2).sum()

    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=10.0, chains=chains, draws=8, burnin=0, batch_size=m
    )
    res = estimate_llc(loss, torch.zeros(1, dtype=torch.float64), n=n, settings=s)
    assert res.init_loss == float(code.sum())

    def rows_of(v: float) -> set[int]:
        bits = int(v)
        return {i for i in range(n) if bits >> i & 1}

    for c in range(chains):
        for epoch in range(2):
            sets = [rows_of(v) for v in res.trace[c, epoch * 4 : epoch * 4 + 4]]
            assert all(len(r) == m for r in sets)
            assert set().union(*sets) == set(range(n))
    assert rows_of(res.trace[0, 0]) != rows_of(res.trace[1, 0])


def test_divergence_is_flagged_and_excluded() -> None:
    """Chains that blow up are excluded with a warning, never averaged in silently."""
    # w^2 with eps * nbeta = 4 > 2: the SGLD iteration is unstable and runs off to inf/NaN.
    k = torch.tensor([1])
    s = LLCSettings(
        epsilon=0.04, gamma=0.0, nbeta=100.0, chains=4, draws=100, burnin=0, batch_size=None
    )
    res = estimate_llc(_poly_loss(k), torch.zeros(1, dtype=torch.float64), n=100, settings=s)
    assert set(res.diverged) == {0, 1, 2, 3}
    assert math.isnan(res.llc)
    assert any("diverged" in w for w in res.warnings)


def test_loss_bound_flags_some_chains() -> None:
    """A chain whose loss exceeds max_loss is excluded; the others still give the estimate."""
    k = torch.tensor([1])
    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=100.0, chains=64, draws=200, burnin=0, batch_size=None
    )
    base = estimate_llc(_poly_loss(k), torch.zeros(1, dtype=torch.float64), n=100, settings=s)
    bound = float(np.quantile(base.trace.max(axis=1), 0.8))
    res = estimate_llc(
        _poly_loss(k), torch.zeros(1, dtype=torch.float64), n=100, settings=s, max_loss=bound
    )
    over = {c for c in range(64) if base.trace[c].max() > bound}
    assert set(res.diverged) == over and 0 < len(over) < 64
    keep = [c for c in range(64) if c not in over]
    assert res.llc == pytest.approx(base.llc_per_chain[keep].mean())
    assert "lower epsilon or raise gamma" in res.warnings[0]
    assert "chain" in res.warnings[0]


def test_dips_below_init_are_reported() -> None:
    """Starting away from the minimum, draws fall below L(w*): negative estimate, warned."""
    k = torch.tensor([1, 1])
    s = LLCSettings(
        epsilon=1e-3, gamma=0.0, nbeta=100.0, chains=8, draws=200, burnin=0, batch_size=None
    )
    res = estimate_llc(_poly_loss(k), torch.ones(2, dtype=torch.float64), n=100, settings=s)
    assert res.llc < 0
    assert res.frac_below_init > 0.9
    assert any("<= 0" in w for w in res.warnings)


def test_convergence_ratio_detects_a_trend() -> None:
    """Too small a step for the burn-in: the trace is still rising, the ratio says so."""
    k = torch.tensor([1] * 4)
    s = LLCSettings(
        epsilon=1e-5, gamma=0.0, nbeta=100.0, chains=8, draws=200, burnin=0, batch_size=None
    )
    res = estimate_llc(_poly_loss(k), torch.zeros(4, dtype=torch.float64), n=100, settings=s)
    assert res.convergence_ratio > 1.25
    assert any("not converged" in w for w in res.warnings)
    ok, why = llc.judge(res)
    assert not ok and "not flat" in why


def _synthetic_trace(
    e: float,
    *,
    chains: int = 4,
    burnin: int = 40,
    draws: int = 200,
    bump: float = 0.0,
    at: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Excess loss rising to ``e`` over the first 10 steps, plus noise of sd 0.1·e, plus a
    bump of ``bump``·e over the 16 steps from ``at`` (an overshoot that comes back down).
    ``[chains, burnin + draws]``."""
    t = np.arange(burnin + draws)
    level = e * (1 - np.exp(-t / 3.0))
    level[at : at + 16] += bump * e
    return level + 0.1 * e * np.random.default_rng(seed).standard_normal((chains, len(t)))


def _judged(trace: np.ndarray, *, init_loss: float = 1.0, nbeta: float = 100.0):
    s = LLCSettings(chains=trace.shape[0], burnin=40, draws=trace.shape[1] - 40, batch_size=None)
    res = llc._summarise(
        init_loss + trace,
        init_loss=init_loss,
        nbeta=nbeta,
        n=1000,
        n_params=1000,
        settings=s,
        max_loss=None,
        seconds=0.0,
    )
    return res, llc.judge(res)


def test_judge_accepts_a_flat_trace_and_rejects_an_early_spike() -> None:
    """The calibration rule on synthetic traces with a known shape (E = 0.05 above L(w*))."""
    res, (ok, why) = _judged(_synthetic_trace(0.05))
    assert res.llc == pytest.approx(100 * 0.05, rel=0.02)
    assert (ok, why) == (True, [])
    # A block at ~1.27x the final level is not a spike; an overshoot to ~2.1x is.
    assert _judged(_synthetic_trace(0.05, bump=0.4, at=24))[1] == (True, [])
    res, (ok, why) = _judged(_synthetic_trace(0.05, bump=2.0))
    assert not ok and why == ["early spike"]  # burn-in only: the estimate itself is flat
    assert res.llc == pytest.approx(100 * 0.05, rel=0.02)
    # The same overshoot after the middle of the draws is not an early spike.
    late = _synthetic_trace(0.05, bump=2.0, at=200)  # draws are steps 40..239, middle 140
    assert "early spike" not in _judged(late)[1][1]


def test_calibration_recommends_the_smallest_passing_gamma_at_the_largest_passing_epsilon(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """judge() and the tie-break run for real on synthetic sampler traces: at epsilon 1e-3
    every trace spikes, at 3e-4 gamma 30 spikes and gammas 100, 300, 1000 are flat."""
    from groklab.run import load_run

    run = load_run(tiny_run)
    l0 = llc.run_loss(run, 60).init_loss

    def fake_chains(loss_fn, flat, *, eps, gamma, steps, seed, **kw):
        rows = [
            l0
            + _synthetic_trace(
                0.05,
                chains=1,
                burnin=40,
                draws=steps - 40,
                seed=seed + i,
                bump=2.0 if e >= 1e-3 or (e == 3e-4 and g == 30.0) else 0.0,
            )[0]
            for i, (e, g) in enumerate(zip(eps.tolist(), gamma.tolist(), strict=True))
        ]
        return torch.tensor(np.stack(rows), dtype=torch.float64)

    # calibrate() looks the sampler up in its own module
    monkeypatch.setattr(llc_calibration, "_run_chains", fake_chains)
    base = LLCSettings(chains=2, draws=200, burnin=40, batch_size=None)
    cal = llc.calibrate(
        run,
        60,
        epsilons=(1e-3, 1e-4, 3e-4),  # neither order helps: ties are broken by the rule
        gammas=(1000.0, 300.0, 30.0, 100.0),
        base=base,
        save=False,
    )
    by = {
        (r.settings.epsilon, r.settings.gamma): (ok, why)
        for r, ok, why in zip(cal.results, cal.ok, cal.reasons, strict=True)
    }
    assert all(by[(1e-3, g)] == (False, ["early spike"]) for g in (30.0, 100.0, 300.0, 1000.0))
    assert by[(3e-4, 30.0)] == (False, ["early spike"])
    assert all(by[(e, g)] == (True, []) for e in (1e-4, 3e-4) for g in (100.0, 300.0, 1000.0))
    assert by[(1e-4, 30.0)] == (True, [])
    assert (cal.recommendation.epsilon, cal.recommendation.gamma) == (3e-4, 100.0)


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match=r"llc\.epsilon"):
        LLCSettings(epsilon=0)
    with pytest.raises(ConfigError, match=r"llc\.gamma"):
        LLCSettings(gamma=-1)
    with pytest.raises(ConfigError, match=r"llc\.nbeta"):
        LLCSettings(nbeta="n")
    with pytest.raises(ConfigError, match=r"llc\.chains"):
        LLCSettings(chains=0)
    with pytest.raises(ConfigError, match=r"llc\.batch_size"):
        LLCSettings(batch_size=0)
    s = LLCSettings(nbeta=12.5, batch_size=None)
    assert LLCSettings.from_dict(s.to_dict()) == s
    assert s.key() == LLCSettings.from_dict(s.to_dict()).key() != LLCSettings().key()
    with pytest.raises(ConfigError, match="unknown key"):
        LLCSettings.from_dict({"epsilon": 1e-3, "lr": 1})


def test_nbeta_resolution() -> None:
    assert llc.resolve_nbeta("n/log n", n=1000, batch_size=100) == pytest.approx(
        1000 / math.log(1000)
    )
    assert llc.resolve_nbeta("m/log m", n=1000, batch_size=100) == pytest.approx(
        100 / math.log(100)
    )
    assert llc.resolve_nbeta("m/log m", n=1000, batch_size=None) == pytest.approx(
        1000 / math.log(1000)
    )
    assert llc.resolve_nbeta(7.0, n=1000, batch_size=None) == 7.0


def test_settings_key_is_the_same_for_int_and_float_numbers() -> None:
    a = LLCSettings(epsilon=1e-4, gamma=1000, nbeta=500, max_loss=10)
    b = LLCSettings(epsilon=1e-4, gamma=1000.0, nbeta=500.0, max_loss=10.0)
    assert a.key() == b.key()
    assert isinstance(a.gamma, float) and isinstance(a.nbeta, float)
    assert LLCSettings(nbeta="n/log n").key() != a.key()
    with pytest.raises(ConfigError, match=r"llc\.gamma"):
        LLCSettings(gamma="lots")  # type: ignore[arg-type]


def test_landmarks() -> None:
    import pandas as pd

    steps = np.arange(0, 2000, 100)
    v = np.concatenate([np.linspace(10, 100, 5), np.linspace(95, 30, 8), np.full(7, 30.0)])
    v[-3] = 31  # within 10% of the drop
    lm = llc.landmarks(pd.DataFrame({"step": steps, "llc": v}), scale="linear")
    assert lm["peak_step"] == 400 and lm["peak_llc"] == 100
    assert lm["final_llc"] == 30
    assert lm["level_step"] == 1200
    assert lm["level_scale"] == "linear"
    # With a negative estimate after the peak, auto falls back to the linear rule.
    v_neg = v.copy()
    v_neg[6] = -1.0
    assert llc.landmarks(pd.DataFrame({"step": steps, "llc": v_neg}))["level_scale"] == "linear"
    with pytest.raises(ConfigError, match="positive"):
        llc.landmarks(pd.DataFrame({"step": steps, "llc": v_neg}), scale="log")


def test_landmarks_log_scale_for_a_fall_over_orders_of_magnitude() -> None:
    """A grokking-like fall 600 -> 0.25: 10% of the linear drop is reached while the curve is
    still 200x its final level; the log rule waits until it is within a factor ~2.2."""
    import pandas as pd

    steps = np.arange(0, 2100, 100)
    fall = "1 300 600 300 200 150 120 100 60 30 10 4 2 0.9 0.5 0.3 0.26 0.25 0.24 0.25 0.25"
    v = np.array([float(x) for x in fall.split()])
    df = pd.DataFrame({"step": steps, "llc": v})
    lin = llc.landmarks(df, scale="linear")
    log = llc.landmarks(df)
    assert lin["level_step"] == 800  # 60 is within 10% of the drop (59.98) of 0.25
    assert log["level_scale"] == "log"
    # ln(600 / 0.25) = 7.78; 10% is a factor e^0.778 = 2.18: 0.5 (step 1400) is the first
    # point below 0.25 * 2.18 = 0.545 after which every point stays below it.
    assert log["level_step"] == 1400
    assert log["peak_step"] == 200 and log["final_llc"] == 0.25


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mixed add/mul run (a few checkpoints, seconds to train)."""
    import groklab
    from groklab.config import apply_overrides

    cfg = groklab.get_preset("smoke")
    cfg = apply_overrides(
        cfg,
        [
            "data.p=11",
            'data.operations=["add","mul"]',
            "data.train_fraction=0.6",
            "model.d_model=16",
            "model.d_head=4",
            "model.d_mlp=32",
            "train.steps=60",
            "train.eval_every=20",
            "train.checkpoint_every=20",
        ],
    )
    out = tmp_path_factory.mktemp("llc") / "tiny"
    groklab.train(cfg, out=out, progress=False)
    return out


_FAST = LLCSettings(epsilon=1e-4, gamma=100.0, chains=2, draws=20, burnin=10, batch_size=32)


def test_run_loss_matches_the_runs_training_loss(tiny_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(tiny_run)
    rl = llc.run_loss(run, 60)
    final = run.metrics.set_index("step").loc[60]
    assert rl.init_loss == pytest.approx(final["train/loss"], rel=1e-6)
    assert rl.n == run.task.n_train
    add = llc.run_loss(run, 60, subset="test/add")
    assert add.subset == "add"
    assert add.n == len(run.task.subsets["train/add"].rows)
    assert add.init_loss == pytest.approx(final["train/add/loss"], rel=1e-6)


def test_resolve_subset_names(tiny_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(tiny_run)
    assert llc.resolve_subset(run, None)[0] == "total"
    for name in ("mul", "train/mul", "test/mul"):
        n, rows, pos = llc.resolve_subset(run, name)
        assert n == "mul" and rows is not None and pos is None
        assert torch.equal(rows, run.task.subsets["train/mul"].rows)
    with pytest.raises(ConfigError, match="allowed: total, add, mul"):
        llc.resolve_subset(run, "div")


def test_estimate_on_a_run_checkpoint(tiny_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(tiny_run)
    res = llc.estimate_llc_at(run, 60, _FAST)
    assert math.isfinite(res.llc)
    assert res.n_params == sum(p.numel() for p in run.model_at(60).parameters())
    assert res.max_loss == pytest.approx(res.init_loss + math.log(run.task.d_vocab_out))
    assert res.trace.shape == (2, 30)


def test_over_checkpoints_caches_and_recomputes_only_missing(tiny_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(tiny_run)
    seen: list[tuple[int, bool]] = []
    df = llc.llc_over_checkpoints(
        run, _FAST, steps=[20, 60], subset="add", on_step=lambda s, r: seen.append((s, r is None))
    )
    assert list(df["step"]) == [20, 60] and seen == [(20, False), (60, False)]
    cache = tiny_run / llc.LLC_DIR
    meta = json.loads(next(cache.glob("llc-add-*.json")).read_text())
    assert meta["settings"] == _FAST.to_dict() and meta["subset"] == "add"
    assert meta["n"] == len(run.task.subsets["train/add"].rows)
    seen.clear()
    df2 = llc.llc_over_checkpoints(
        run, _FAST, every=20, subset="add", on_step=lambda s, r: seen.append((s, r is None))
    )
    assert list(df2["step"]) == [0, 20, 40, 60]
    assert seen == [(0, False), (20, True), (40, False), (60, True)]
    np.testing.assert_array_equal(df2.set_index("step").loc[[20, 60], "llc"], df["llc"])
    rows, traces = llc.read_cache(run, _FAST, subset="add")
    assert sorted(rows["step"]) == [0, 20, 40, 60]
    assert len(traces) == 4 * 2 * 30
    # another process filling the same cache meanwhile: its rows survive our writes
    other_proc = replace(_FAST, seed=2)

    def interleave(step: int, res: object) -> None:
        if step == 20:
            llc.llc_over_checkpoints(run, other_proc, steps=[0], subset="add")

    llc.llc_over_checkpoints(run, other_proc, steps=[20, 40], subset="add", on_step=interleave)
    rows2, _ = llc.read_cache(run, other_proc, subset="add")
    assert sorted(rows2["step"]) == [0, 20, 40]
    # other settings are a separate cache
    other = replace(_FAST, seed=1)
    df3 = llc.llc_over_checkpoints(run, other, steps=[60], subset="add")
    assert df3["llc"].iloc[0] != df["llc"].iloc[1]


def test_cached_estimates_without_the_gamma_check_get_it(tiny_run: Path) -> None:
    """A cache made without the γ check (as before it existed) stays readable under the same
    key; asking for the check recomputes those steps — same estimate, check added."""
    from groklab.run import load_run

    run = load_run(tiny_run)
    off = replace(_FAST, gamma_check=None, seed=7)
    on = replace(off, gamma_check=3.0)
    old = llc.llc_over_checkpoints(run, off, steps=[40], subset="mul")
    assert old["gamma_check"].isna().all() and old["gamma_sensitive"].isna().all()
    seen: list[tuple[int, bool]] = []
    new = llc.llc_over_checkpoints(
        run, on, steps=[20, 40], subset="mul", on_step=lambda s, r: seen.append((s, r is None))
    )
    assert seen == [(20, False), (40, False)]
    assert new.set_index("step").loc[40, "llc"] == old["llc"].iloc[0]
    assert (new["gamma_check"] == 3.0).all() and (new["gamma_check_chains"] == 1).all()
    assert new["llc_gamma_lo"].notna().all() and new["gamma_sensitive"].isin([0.0, 1.0]).all()
    seen.clear()
    llc.llc_over_checkpoints(
        run, on, steps=[20, 40], subset="mul", on_step=lambda s, r: seen.append((s, r is None))
    )
    assert seen == [(20, True), (40, True)]
    # asking without the check reuses the rows that have it
    seen.clear()
    llc.llc_over_checkpoints(
        run, off, steps=[40], subset="mul", on_step=lambda s, r: seen.append((s, r is None))
    )
    assert seen == [(40, True)]


def test_calibration_sweeps_and_recommends(tiny_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(tiny_run)
    base = LLCSettings(chains=2, draws=40, burnin=20, batch_size=None)
    cal = llc.calibrate(run, 60, epsilons=(1e-5, 1e-4, 10.0), gammas=(100.0, 1000.0), base=base)
    assert len(cal.results) == 6
    huge = [i for i, r in enumerate(cal.results) if r.settings.epsilon == 10.0]
    assert all(not cal.ok[i] and "diverged" in cal.reasons[i] for i in huge)
    if cal.recommended is not None:
        rec = cal.results[cal.recommended].settings
        passing = [cal.results[i].settings for i, ok in enumerate(cal.ok) if ok]
        assert rec.epsilon == max(s.epsilon for s in passing)
    saved = json.loads((tiny_run / llc.LLC_DIR / llc.CALIBRATION_FILE).read_text())
    assert saved["step"] == 60 and len(saved["sweep"]) == 6
    assert (tiny_run / llc.LLC_DIR / "calibration-step60-traces.npz").exists()


def test_cli_llc_and_calibrate(tiny_run: Path) -> None:
    import_extra("kaleido", "plot")
    from typer.testing import CliRunner

    from groklab.cli import app

    r = CliRunner().invoke(
        app,
        [
            "llc",
            "calibrate",
            str(tiny_run),
            "--step",
            "40",
            "--epsilons",
            "1e-5,1e-4",
            "--gammas",
            "100",
            "--chains",
            "2",
            "--draws",
            "30",
            "--burnin",
            "10",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tiny_run / llc.LLC_DIR / "calibration-step40.png").stat().st_size > 0
    r = CliRunner().invoke(
        app,
        [
            "llc",
            str(tiny_run),
            "--every",
            "20",
            "--subset",
            "total",
            "--subset",
            "test/mul",
            "--chains",
            "2",
            "--draws",
            "20",
            "--burnin",
            "5",
            "--batch-size",
            "0",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "peak LLC" in r.output
    assert "γ-sensitive" in r.output or "γ-stable" in r.output
    pngs = list((tiny_run / llc.LLC_DIR).glob("llc-total-mul-*.png"))
    assert pngs and pngs[0].stat().st_size > 0
    bad = CliRunner().invoke(app, ["llc", str(tiny_run), "--subset", "div", "-q"])
    assert bad.exit_code == 2 and "allowed" in bad.output
    bad = CliRunner().invoke(app, ["llc", "calibrate", str(tiny_run), "--step", "7", "-q"])
    assert bad.exit_code == 2 and "no checkpoint at step 7" in bad.output


def test_mlp_run_is_vmapped(tmp_path: Path, make_config) -> None:
    """Models without a stacked forward go through torch.func.vmap over the chains."""
    import groklab

    cfg = make_config(model={"arch": "mlp", "n_layers": 2, "d_mlp": 32}, train={"steps": 20})
    run = groklab.train(cfg, out=tmp_path / "mlp", progress=False)
    rl = llc.run_loss(run, 20)
    assert not rl.batched
    assert rl.init_loss == pytest.approx(run.metrics.iloc[-1]["train/loss"], rel=1e-6)
    res = llc.estimate_llc_at(run, 20, _FAST)
    assert math.isfinite(res.llc) and res.trace.shape == (2, 30)
