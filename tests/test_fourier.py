"""Known-answer tests of the Fourier toolkit: synthetic signals built from chosen frequencies."""

from __future__ import annotations

import math

import pytest
import torch

from groklab.analysis import fourier as fr
from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks import build_task


def _wave(n: int, k: int, x: torch.Tensor, kind: str = "cos") -> torch.Tensor:
    f = torch.cos if kind == "cos" else torch.sin
    return f(2 * math.pi * k * x.double() / n)


@pytest.mark.parametrize("n", [7, 12, 53])
def test_basis_is_orthonormal_and_labelled(n):
    b = fr.fourier_basis(n)
    assert b.matrix.shape == (n, n)
    torch.testing.assert_close(b.matrix @ b.matrix.T, torch.eye(n, dtype=torch.float64))
    assert b.labels[0] == "const" and b.labels[1] == "cos 1" and b.labels[2] == "sin 1"
    assert b.n_freqs == n // 2
    assert b.rows(n // 2) == ([n - 1] if n % 2 == 0 else [n - 2, n - 1])


def test_embedding_norms_recover_chosen_frequencies():
    n, d = 31, 6
    x = torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, d, generator=gen, dtype=torch.float64)
    # W_E = u0 cos(3x) + u1 sin(3x) + u2 cos(11x)
    w_e = (
        _wave(n, 3, x)[:, None] * u[0]
        + _wave(n, 3, x, "sin")[:, None] * u[1]
        + _wave(n, 11, x)[:, None] * u[2]
    )
    b = fr.fourier_basis(n)
    norms = fr.frequency_norms(fr.fourier_1d(w_e, b), b)
    want = torch.zeros(n // 2 + 1, dtype=torch.float64)
    # <cos(kx), √(2/n) cos(kx)> = √(n/2)
    want[3] = math.sqrt(n / 2) * torch.cat([u[0], u[1]]).norm()
    want[11] = math.sqrt(n / 2) * u[2].norm()
    torch.testing.assert_close(norms, want, atol=1e-9, rtol=1e-9)
    # The same along dim=1 (the W_L layout [d_mlp, n]).
    torch.testing.assert_close(fr.frequency_norms(fr.fourier_1d(w_e.T, b, dim=1), b, dim=1), want)
    # Component norms: cos 3, sin 3, cos 11 rows only.
    comp = fr.component_norms(fr.fourier_1d(w_e, b))
    assert set(torch.nonzero(comp > 1e-9).flatten().tolist()) == {5, 6, 21}


def test_gini_known_values():
    assert fr.gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert fr.gini(torch.tensor([0.0, 0, 0, 5])) == pytest.approx(3 / 4)
    assert fr.gini(torch.tensor([0.0, 0, 1, 1])) == pytest.approx(0.5)
    assert fr.gini(torch.tensor([1.0, 2, 3, 4])) == pytest.approx(0.25)
    assert fr.gini(torch.zeros(4)) == 0.0


def test_gini_of_sparse_embedding_norms():
    # Two equal frequencies out of 15: Gini = (m - k)/m exactly for k equal non-zeros.
    n = 31
    x = torch.arange(n)
    w_e = torch.stack([_wave(n, 4, x), _wave(n, 9, x, "sin")], dim=1)
    b = fr.fourier_basis(n)
    norms = fr.frequency_norms(fr.fourier_1d(w_e, b), b)[1:]
    assert fr.gini(norms) == pytest.approx((15 - 2) / 15, abs=1e-9)


def test_fourier_2d_of_product_wave():
    n = 11
    a, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    f = _wave(n, 2, a) * _wave(n, 2, c, "sin")  # cos(2a) sin(2b)
    coeff = fr.fourier_2d(f, fr.fourier_basis(n))
    nz = torch.nonzero(coeff.abs() > 1e-9).tolist()
    assert nz == [[3, 4]]  # row cos 2, column sin 2
    assert coeff[3, 4].item() == pytest.approx(n / 2)


def test_neuron_clusters_known_labels_and_shares():
    n = 23
    a, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    gen = torch.Generator().manual_seed(1)
    neurons = [
        # pure frequency 5: const + const×cos + product terms → share 1.0 after centring
        2.0 + _wave(n, 5, a) + 0.5 * _wave(n, 5, a) * _wave(n, 5, c, "sin"),
        # pure frequency 9 in b only
        _wave(n, 9, c, "sin"),
        # 60% frequency 2, 40% frequency 7 in squared norm → share 0.6, unclustered
        math.sqrt(1.5) * _wave(n, 2, a) + _wave(n, 7, c),
        # 90% frequency 3, 10% frequency 4 in squared norm → clustered at 3 with share 0.9
        3.0 * _wave(n, 3, a) + 1.0 * _wave(n, 4, c),
        # a wave of a + b is cos(a)cos(b) − sin(a)sin(b): frequency 6, share 1
        _wave(n, 6, a + c),
        # dead neuron
        torch.zeros(n, n, dtype=torch.float64),
        # noise: spread over all frequencies
        torch.randn(n, n, generator=gen, dtype=torch.float64),
    ]
    acts = torch.stack(neurons, dim=-1)
    cl = fr.neuron_clusters(acts, fr.fourier_basis(n))
    assert cl.freq[:6].tolist() == [5, 9, 2, 3, 6, 0]
    torch.testing.assert_close(
        cl.share[:6], torch.tensor([1.0, 1.0, 0.6, 0.9, 1.0, 0.0], dtype=torch.float64)
    )
    assert cl.clustered.tolist() == [True, True, False, True, True, False, False]
    assert cl.share[6] < 0.5
    assert cl.clustered_share == pytest.approx(4 / 7)
    assert cl.counts() == {3: 1, 5: 1, 6: 1, 9: 1}
    # The 8 terms of a frequency, over all frequencies, plus const×const cover everything.
    torch.testing.assert_close(cl.shares[:, :5].sum(0), torch.ones(5, dtype=torch.float64))


def _add_task(p: int = 13, ops: tuple[str, ...] = ("add",), **kw):
    return build_task(DataConfig(p=p, operations=ops, **kw))


def _pure_logits(grid: fr.OperationGrid, amps: dict[int, float]) -> torch.Tensor:
    s = grid.target.double()[:, None]
    cls = torch.arange(grid.n, dtype=torch.float64)[None, :]
    return sum(a * torch.cos(2 * math.pi * k / grid.n * (s - cls)) for k, a in amps.items())


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "quad"])
def test_operation_grid_targets_and_splits(op):
    p = 13
    task = _add_task(p, (op,), train_fraction=0.4)
    g = fr.operation_grid(task)
    n = p - 1 if op in ("mul", "div") else p
    assert g.n == n and g.tokens.shape == (n * n, 3)
    a, b = g.tokens[:, 0], g.tokens[:, 1]
    from groklab.tasks.modular import modular_label

    torch.testing.assert_close(g.labels, modular_label(op, a, b, p))
    # Every grid row is in exactly one split; the split sizes match the task's rows that
    # have a place on the grid (non-zero operands for mul/div).
    assert not bool((g.train & g.test).any()) and bool((g.train | g.test).all())
    on_grid = (task.train_x[:, 0] != 0) & (task.train_x[:, 1] != 0) if n == p - 1 else None
    n_train = task.n_train if on_grid is None else int(on_grid.sum())
    assert int(g.train.sum()) == n_train
    if n == p - 1:
        assert g.generator == 2  # the smallest generator of Z_13*
        assert sorted(g.residues.tolist()) == list(range(1, p))
        torch.testing.assert_close(g.residues, torch.tensor([pow(2, e, p) for e in range(n)]))


def test_operation_grid_mixed_task_uses_op_tokens():
    p = 11
    task = _add_task(p, ("add", "mul"), train_size=60)
    for k, op in enumerate(("add", "mul")):
        g = fr.operation_grid(task, op)
        assert g.tokens.shape[1] == 4
        assert (g.tokens[:, 1] == p + 1 + k).all() and (g.tokens[:, 3] == p).all()
        rows = task.train_x[task.info["train_op"] == k]
        if op == "mul":
            rows = rows[(rows[:, 0] != 0) & (rows[:, 2] != 0)]
        assert int(g.train.sum()) == len(rows)


def test_operation_grid_errors():
    task = _add_task(13, ("add", "mul"), train_size=50)
    with pytest.raises(ConfigError, match="not in this run"):
        fr.operation_grid(task, "div")
    with pytest.raises(ConfigError, match="does not generate"):
        fr.operation_grid(task, "mul", generator=3)  # 3 has order 3 in Z_13*
    with pytest.raises(ConfigError, match="modular task"):
        fr.operation_grid(object())
    assert fr.primitive_root(113) == 3 and fr.primitive_root(59) == 2
    with pytest.raises(ConfigError, match="prime"):
        fr.primitive_root(15)


@pytest.mark.parametrize("op", ["add", "mul", "quad"])
def test_key_frequencies_and_logit_fit_recover_pure_logits(op):
    p = 17
    g = fr.operation_grid(_add_task(p, (op,)))
    nyquist = g.n // 2 if g.n % 2 == 0 else 4
    amps = {2: 3.0, 5: 1.5, nyquist: 1.2}
    logits = _pure_logits(g, amps)
    power = fr.logit_frequency_power(logits, g)
    assert fr.key_frequencies(power) == sorted(amps)
    fit = fr.logit_fit(logits, g, sorted(amps))
    assert fit.fve == pytest.approx(1.0, abs=1e-9)
    assert list(fit.coef) == pytest.approx([amps[k] for k in sorted(amps)], abs=1e-9)
    if op != "quad":  # each frequency's power is |A_k cos(w(s − c))|² = A² n³/2 (n²/... exact)
        for k, a in amps.items():
            scale = g.n**3 if 2 * k == g.n else g.n**3 / 2
            assert power[k].item() == pytest.approx(a * a * scale, rel=1e-9)


def test_logit_fit_fraction_of_variance_explained():
    p = 13
    g = fr.operation_grid(_add_task(p))
    fitted = _pure_logits(g, {3: 2.0})
    a = g.tokens[:, 0].double()[:, None]
    cls = torch.arange(p, dtype=torch.float64)[None, :]
    # A wave of (a − c): orthogonal to every cos(w(a + b − c)) over the grid.
    extra = 1.0 * torch.cos(2 * math.pi * 4 / p * (a - cls))
    fit = fr.logit_fit(fitted + extra, g, [3])
    want = fitted.pow(2).sum() / (fitted.pow(2).sum() + extra.pow(2).sum())
    assert fit.fve == pytest.approx(want.item(), abs=1e-9)
    assert fit.coef[0] == pytest.approx(2.0, abs=1e-9)
    # A constant per row changes nothing (logits are centred over classes first).
    shifted = fr.logit_fit(fitted + extra + g.tokens[:, :1].double(), g, [3])
    assert shifted.fve == pytest.approx(fit.fve, abs=1e-9)


def _spectrum(n_freqs: int, strong: dict[int, float], floor: float, seed: int = 0) -> torch.Tensor:
    """Logit power per frequency: ``strong`` ones on a noise floor (index 0 unused)."""
    g = torch.Generator().manual_seed(seed)
    power = torch.zeros(n_freqs + 1, dtype=torch.float64)
    power[1:] = floor * torch.rand(n_freqs, generator=g, dtype=torch.float64)
    for k, v in strong.items():
        power[k] = v
    return power


def test_key_frequencies_keep_a_dominated_circuit():
    # A canonical transformer 100k steps past grokking (weight decay 0.1): five key frequencies
    # spanning a power ratio of 37, then the rest from 3.5e5 down.
    strong = {14: 7.1e8, 35: 6.4e7, 41: 3.4e7, 42: 2.7e7, 52: 1.9e7, 7: 3.5e5}
    power = _spectrum(56, strong, floor=3.0e5)
    assert fr.key_frequencies(power) == [14, 35, 41, 42, 52]
    assert fr.key_frequencies_above(power, 0.1) == [14]  # the former rule lost four of them
    # A power ratio of 1,000 between the strongest and the weakest key frequency.
    spread = {3: 1e9, 9: 1e8, 20: 1e7, 33: 1e6, 50: 1e6 * 1.05}
    assert fr.key_frequencies(_spectrum(56, spread, floor=1e4)) == [3, 9, 20, 33, 50]
    # One gap must span a decade: a 5x step is not a circuit's edge.
    assert fr.key_frequencies(_spectrum(56, {3: 5e4}, floor=1e4)) == []
    assert fr.key_frequencies(_spectrum(56, {3: 5e4}, floor=1e4), min_gap=0.5) == [3]


def test_key_frequencies_of_noise_spectra_are_empty():
    # Untrained or memorising logits spread their power over every frequency: exponentially
    # distributed powers (a sum of two squared Gaussians each), whose smallest values may differ
    # by any factor, but whose largest few never by a decade.
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        power = torch.zeros(57, dtype=torch.float64)
        power[1:] = -torch.rand(56, generator=g, dtype=torch.float64).log()
        assert fr.key_frequencies(power) == [], seed
    assert fr.key_frequencies(torch.zeros(57)) == []
    # More key frequencies than the cap, or than half of all frequencies, is no sparse circuit.
    assert fr.key_frequencies(_spectrum(56, dict.fromkeys(range(1, 12), 1e6), 1.0)) == []
    assert fr.key_frequencies(_spectrum(8, dict.fromkeys(range(1, 6), 1e6), 1.0)) == []
    assert fr.key_frequencies(_spectrum(8, dict.fromkeys(range(1, 5), 1e6), 1.0)) == [1, 2, 3, 4]
