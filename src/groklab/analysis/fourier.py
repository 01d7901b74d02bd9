"""The Fourier toolkit for modular arithmetic (Nanda et al. 2023).

A network that has grokked ``(a + b) mod p`` works in the Fourier basis of ``Z_p``: it embeds
each residue as ``cos(w_k a), sin(w_k a)`` for a few *key frequencies* ``w_k = 2πk/p``, its MLP
neurons multiply those waves, and its logits are ``Σ_k A_k cos(w_k(a + b − c))``. This module
holds the pure tensor operations that read that algorithm off weights and activations:

* :func:`fourier_basis` — the orthonormal basis of ``R^n`` for the cyclic group ``Z_n``
  (constant, then ``cos k``, ``sin k`` for ``k = 1 .. ⌊(n−1)/2⌋``, then ``cos(n/2)`` when ``n``
  is even), with :func:`fourier_1d` / :func:`fourier_2d` transforms and per-frequency norms.
* :class:`OperationGrid` / :func:`operation_grid` — every problem of one operation laid out on
  an ``n × n`` grid of operand *indices*. For ``add``, ``sub`` and ``quad`` the index of a
  residue is the residue itself (``n = p``). For ``mul`` and ``div`` the non-zero residues are
  re-indexed by discrete logarithm (``residue = g^index`` for a generator ``g`` of ``Z_p*``),
  which turns multiplication into addition mod ``p − 1``, so the same basis (of ``Z_{p−1}``)
  applies; problems with a zero operand (answer 0, no logarithm) are left out.
* Neuron frequencies and clusters, logit-frequency power and key frequencies, the logit fit
  ``Σ_k A_k cos(w_k(s − c))`` with its fraction of variance explained, and the Gini coefficient.

Throughout, ``s(a, b)`` is the *index* of the correct answer (``a + b`` for addition, ``a − b``
for subtraction, ``a² + ab + b²`` for quad, ``log a ± log b`` for mul/div), and logits are taken
over the ``n`` answer classes in index order (``grid.residues``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from groklab.errors import ConfigError

__all__ = [
    "CLUSTER_THRESHOLD",
    "KEY_FREQ_MAX",
    "KEY_FREQ_MIN_GAP",
    "FourierBasis",
    "LogitFit",
    "NeuronClusters",
    "OperationGrid",
    "component_norms",
    "embedding_matrix",
    "fourier_1d",
    "fourier_2d",
    "fourier_basis",
    "frequency_norms",
    "gini",
    "key_frequencies",
    "key_frequencies_above",
    "logit_fit",
    "logit_frequency_power",
    "neuron_clusters",
    "neuron_logit_map",
    "operation_grid",
    "primitive_root",
    "project_on_sum",
    "sum_counts",
    "sum_functions",
    "sum_profile",
]

#: A neuron is clustered when at least this share of its centred activation's squared norm
#: lies in the 8 two-dimensional Fourier terms of one frequency (the paper's 0.85).
CLUSTER_THRESHOLD = 0.85

#: The key frequencies are the strongest ones down to the largest gap in logit power, which must
#: span at least this many decades (factor 10) — see :func:`key_frequencies`.
KEY_FREQ_MIN_GAP = 1.0

#: A sparse circuit has at most this many key frequencies (and at most half of all frequencies);
#: gaps further down the sorted powers are never cut at.
KEY_FREQ_MAX = 10


# --------------------------------------------------------------------------- the basis
@dataclass(frozen=True, eq=False)
class FourierBasis:
    """Orthonormal Fourier basis of ``R^n`` indexed by ``Z_n``.

    Attributes:
        n: the group size.
        matrix: ``[n_component, n]`` rows are the orthonormal basis vectors.
        freq: ``[n_component]`` frequency of each row (0 for the constant).
        kind: ``const``, ``cos`` or ``sin`` per row.
    """

    n: int
    matrix: torch.Tensor
    freq: torch.Tensor
    kind: tuple[str, ...]

    @property
    def n_freqs(self) -> int:
        """Number of non-zero frequencies, ``⌊n/2⌋``."""
        return self.n // 2

    @property
    def labels(self) -> list[str]:
        return [
            k if k == "const" else f"{k} {int(f)}"
            for k, f in zip(self.kind, self.freq, strict=True)
        ]

    def rows(self, k: int) -> list[int]:
        """Row indices of frequency ``k`` (one or two: cos, and sin unless Nyquist)."""
        return [i for i in range(self.n) if int(self.freq[i]) == k]


def fourier_basis(n: int, *, dtype: torch.dtype = torch.float64) -> FourierBasis:
    """The orthonormal Fourier basis of ``Z_n``.

    Rows: the constant ``1/√n``; for ``k = 1 .. ⌊(n−1)/2⌋`` the pair ``√(2/n) cos(2πkx/n)``,
    ``√(2/n) sin(2πkx/n)``; for even ``n`` finally ``cos(πx)/√n`` (its sine is zero).
    """
    if n < 2:
        raise ConfigError(f"fourier basis size n={n} is not allowed; must be >= 2")
    x = torch.arange(n, dtype=torch.float64)
    rows = [torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)]
    freq, kind = [0], ["const"]
    for k in range(1, (n - 1) // 2 + 1):
        w = 2 * math.pi * k / n
        rows += [torch.cos(w * x) * math.sqrt(2 / n), torch.sin(w * x) * math.sqrt(2 / n)]
        freq += [k, k]
        kind += ["cos", "sin"]
    if n % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(n))
        freq.append(n // 2)
        kind.append("cos")
    return FourierBasis(
        n=n,
        matrix=torch.stack(rows).to(dtype),
        freq=torch.tensor(freq),
        kind=tuple(kind),
    )


def fourier_1d(x: torch.Tensor, basis: FourierBasis, *, dim: int = 0) -> torch.Tensor:
    """Coefficients of ``x`` along axis ``dim`` (of size ``n``) in the Fourier basis."""
    x = x.to(basis.matrix.dtype).movedim(dim, 0)
    out = torch.einsum("fi,i...->f...", basis.matrix, x)  # [component, ...]
    return out.movedim(0, dim)


def fourier_2d(x: torch.Tensor, basis: FourierBasis) -> torch.Tensor:
    """2D Fourier coefficients of ``x [n, n, ...]`` (a function of the operand pair)."""
    m = basis.matrix
    # One axis at a time: a three-operand einsum (without opt_einsum) first forms the n⁴ outer
    # product of the two basis matrices, ~7x slower on neuron activations [59, 59, 1280].
    rows = torch.einsum("fa,ab...->fb...", m, x.to(m.dtype))
    return torch.einsum("gb,fb...->fg...", m, rows)


def component_norms(coeffs: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
    """Norm of each Fourier component (axis ``dim``) over all other axes → ``[n]``."""
    c = coeffs.movedim(dim, 0)
    return c.reshape(c.shape[0], -1).norm(dim=1)


def frequency_norms(coeffs: torch.Tensor, basis: FourierBasis, *, dim: int = 0) -> torch.Tensor:
    """Norm per frequency (cos and sin together) → ``[n_freqs + 1]``, index = frequency.

    Index 0 is the constant component; index ``k`` is ``√(|cos k|² + |sin k|²)``.
    """
    sq = component_norms(coeffs, dim=dim).pow(2)
    out = torch.zeros(basis.n_freqs + 1, dtype=sq.dtype)
    out.index_add_(0, basis.freq, sq)
    return out.sqrt()


def gini(x: torch.Tensor) -> float:
    """Gini coefficient of non-negative values: 0 when all equal, ``(m−1)/m`` when one holds all.

    ``G = Σ_i (2i − m − 1) x_(i) / (m Σ x)`` over the values sorted ascending (``i = 1..m``).
    """
    v = torch.as_tensor(x, dtype=torch.float64).flatten().sort().values
    m, total = v.numel(), float(v.sum())
    if m == 0 or total <= 0:
        return 0.0
    i = torch.arange(1, m + 1, dtype=torch.float64)
    return float(((2 * i - m - 1) * v).sum() / (m * total))


# --------------------------------------------------------------------------- operations
def _prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while d * d <= n:
        if n % d == 0:
            out.append(d)
            while n % d == 0:
                n //= d
        d += 1
    if n > 1:
        out.append(n)
    return out


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group ``Z_p*`` (``p`` prime)."""
    if p < 3 or any(p % d == 0 for d in range(2, math.isqrt(p) + 1)):
        raise ConfigError(f"data.p={p} is not an odd prime; the discrete log needs one")
    qs = _prime_factors(p - 1)
    for g in range(2, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in qs):
            return g
    raise AssertionError("unreachable: every prime has a primitive root")


@dataclass(frozen=True, eq=False)
class OperationGrid:
    """Every problem of one operation on an ``n × n`` grid of operand indices.

    Row ``r = i·n + j`` holds operands ``residues[i]`` and ``residues[j]``.

    Attributes:
        op: the operation.
        p: the modulus.
        n: the group the indices live in (``p``, or ``p − 1`` by discrete log).
        generator: the generator ``g`` of ``Z_p*`` for mul/div (``None`` otherwise).
        residues: ``[n]`` residue (= token id) at each index; also the answer classes.
        tokens: ``[n·n, n_ctx]`` the model's input for each grid row.
        target: ``[n·n]`` index of the answer (``s(i, j)``); its token is ``residues[target]``.
        train, test: ``[n·n]`` bool: the row is in the run's training / test split.
    """

    op: str
    p: int
    n: int
    generator: int | None
    residues: torch.Tensor
    tokens: torch.Tensor
    target: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        """Answer token of each row."""
        return self.residues[self.target]

    @property
    def uses_log(self) -> bool:
        return self.generator is not None


def _index_target(op: str, i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    if op in ("add", "mul"):
        return (i + j) % n
    if op in ("sub", "div"):
        return (i - j) % n
    if op == "quad":
        return (i * i + i * j + j * j) % n
    raise ConfigError(f"operation {op!r} is not allowed; allowed: add, sub, mul, div, quad")


def operation_grid(
    task: Any, op: str | None = None, *, generator: int | None = None
) -> OperationGrid:
    """Lay out one operation of a modular task on its index grid.

    Args:
        task: a modular :class:`~groklab.tasks.Task` (its ``info`` gives ``p``, the operations,
            the operand positions and the operation of each train/test row).
        op: which operation (default: the task's only / first one).
        generator: generator of ``Z_p*`` for mul/div (default: the smallest one).

    Raises:
        ConfigError: not a modular task, an unknown operation, or a bad generator.
    """
    info = getattr(task, "info", {}) or {}
    if "p" not in info or "operations" not in info:
        raise ConfigError(
            f"task {getattr(task, 'name', '?')!r}: Fourier analysis needs a modular task "
            "(data.task=modular)"
        )
    p, ops = int(info["p"]), list(info["operations"])
    op = op or ops[0]
    if op not in ops:
        raise ConfigError(f"operation {op!r} is not in this run; allowed: {', '.join(ops)}")
    k_op = ops.index(op)
    a_pos, b_pos = int(info["a_position"]), int(info["b_position"])
    n_ctx = int(task.n_ctx)

    if op in ("mul", "div"):
        g = primitive_root(p) if generator is None else int(generator)
        if not (1 < g < p) or len({pow(g, e, p) for e in range(p - 1)}) != p - 1:
            raise ConfigError(
                f"generator={generator} does not generate Z_{p}*; try {primitive_root(p)}"
            )
        n = p - 1
        residues = torch.tensor([pow(g, e, p) for e in range(n)], dtype=torch.long)
    else:
        g, n = None, p
        residues = torch.arange(p)
    index_of = torch.full((p,), -1, dtype=torch.long)
    index_of[residues] = torch.arange(n)

    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    tokens = torch.full((n * n, n_ctx), p, dtype=torch.long)  # '=' everywhere, then fill
    tokens[:, a_pos] = residues[i]
    tokens[:, b_pos] = residues[j]
    if len(ops) > 1:
        others = [q for q in range(n_ctx - 1) if q not in (a_pos, b_pos)]
        tokens[:, others] = p + 1 + k_op
    target = _index_target(op, i, j, n)

    def mask(x: torch.Tensor, op_of_row: torch.Tensor | None) -> torch.Tensor:
        keep = torch.ones(len(x), dtype=torch.bool) if op_of_row is None else op_of_row == k_op
        ia, ib = index_of[x[keep, a_pos]], index_of[x[keep, b_pos]]
        ok = (ia >= 0) & (ib >= 0)  # rows with a zero operand have no discrete log
        m = torch.zeros(n * n, dtype=torch.bool)
        m[ia[ok] * n + ib[ok]] = True
        return m

    return OperationGrid(
        op=op,
        p=p,
        n=n,
        generator=g,
        residues=residues,
        tokens=tokens,
        target=target,
        train=mask(task.train_x, info.get("train_op")),
        test=mask(task.test_x, info.get("test_op")),
    )


# --------------------------------------------------------------------------- weights
def embedding_matrix(weights: dict[str, torch.Tensor], grid: OperationGrid) -> torch.Tensor:
    """The embedding rows of the grid's residues in index order → ``[n, d]``.

    Transformer: ``embed.W_E[residue]``. MLP on summed one-hots: the same. MLP on concatenated
    one-hots: the block of the first operand's position.
    """
    w_e = weights["embed.W_E"]  # the first operand sits at position 0 in every layout
    return w_e[grid.residues]


def neuron_logit_map(weights: dict[str, torch.Tensor], grid: OperationGrid) -> torch.Tensor | None:
    """``W_L``: the map from the last MLP's neurons to the answer logits → ``[d_mlp, n]``.

    Transformer: ``W_out · W_U`` of the last block (TransformerLens order, ``[d_mlp, d_vocab]``)
    restricted to the answer classes in index order. MLP: ``unembed.W_U`` (the last hidden
    layer feeds it directly). ``None`` for an attention-only transformer.
    """
    w_u = weights["unembed.W_U"]
    outs = [k for k in weights if k.startswith("blocks.") and k.endswith(".mlp.W_out")]
    if outs:
        last = max(outs, key=lambda k: int(k.split(".")[1]))
        w_l = weights[last].double() @ w_u.double()  # [d_mlp, d_model] @ [d_model, d_vocab]
    elif "layers.0.b" in weights:
        w_l = w_u.double()
    else:
        return None
    return w_l[:, grid.residues]


# --------------------------------------------------------------------------- neurons
@dataclass(frozen=True, eq=False)
class NeuronClusters:
    """Each neuron's dominant frequency.

    Attributes:
        freq: ``[d_mlp]`` the frequency holding the largest share (0 for a dead neuron).
        share: ``[d_mlp]`` that share of the neuron's centred squared norm.
        clustered: ``[d_mlp]`` ``share >= threshold``.
        shares: ``[n_freqs + 1, d_mlp]`` the share of every frequency (row 0 unused).
        threshold: the clustering threshold used.
    """

    freq: torch.Tensor
    share: torch.Tensor
    clustered: torch.Tensor
    shares: torch.Tensor
    threshold: float

    @property
    def clustered_share(self) -> float:
        """Share of neurons that are clustered."""
        return float(self.clustered.double().mean())

    def counts(self) -> dict[int, int]:
        """Clustered neurons per frequency (frequencies with at least one)."""
        f = self.freq[self.clustered]
        return {int(k): int((f == k).sum()) for k in torch.unique(f)}


def _freq_masks(basis: FourierBasis) -> torch.Tensor:
    """``[n_freqs + 1, n, n]`` bool: the 2D components (const×k, k×const, k×k) of frequency k."""
    n, nf = basis.n, basis.n_freqs
    masks = torch.zeros(nf + 1, n, n, dtype=torch.bool)
    const = torch.tensor([0])
    for k in range(1, nf + 1):
        r = torch.tensor(basis.rows(k))
        masks[k][const[:, None], r[None, :]] = True
        masks[k][r[:, None], const[None, :]] = True
        masks[k][r[:, None], r[None, :]] = True
    return masks


def neuron_clusters(
    acts: torch.Tensor, basis: FourierBasis, *, threshold: float = CLUSTER_THRESHOLD
) -> NeuronClusters:
    """Assign each neuron to the frequency that explains most of its activation.

    Args:
        acts: ``[n, n, d_mlp]`` activations over the operand grid.
        basis: the Fourier basis of the grid's group.
        threshold: minimum share for a neuron to count as clustered.

    A neuron's share for frequency ``k`` is the squared norm of its centred activation in the 8
    two-dimensional terms ``const·cos k, const·sin k, cos k·const, sin k·const`` and the four
    products of ``cos k, sin k`` (3 terms for the Nyquist frequency of an even ``n``), divided by
    its total centred squared norm.
    """
    centred = acts.double() - acts.double().mean(dim=(0, 1), keepdim=True)
    power = fourier_2d(centred, basis).pow(2)  # [n, n, d_mlp]
    total = power.sum(dim=(0, 1))
    by_freq = torch.einsum("kij,ijd->kd", _freq_masks(basis).double(), power)
    shares = by_freq / total.clamp_min(1e-300)
    shares[:, total <= 1e-24] = 0.0  # dead neurons belong to no frequency
    share, freq = shares[1:].max(dim=0)
    freq = torch.where(share > 0, freq + 1, torch.zeros_like(freq))
    return NeuronClusters(
        freq=freq, share=share, clustered=share >= threshold, shares=shares, threshold=threshold
    )


# --------------------------------------------------------------------------- logits
def sum_functions(n: int, freqs: list[int], *, constant: bool = False) -> torch.Tensor:
    """``[n, m]`` the functions ``cos(w_k v), sin(w_k v)`` of the answer index ``v ∈ Z_n``.

    With ``constant`` a column of ones comes first. A sine that vanishes identically (the
    Nyquist frequency of an even ``n``) is left out.
    """
    v = torch.arange(n, dtype=torch.float64)
    cols = [torch.ones(n, dtype=torch.float64)] if constant else []
    for k in freqs:
        w = 2 * math.pi * k / n
        cols.append(torch.cos(w * v))
        if 2 * k != n:
            cols.append(torch.sin(w * v))
    return torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.float64)


def sum_profile(logits: torch.Tensor, grid: OperationGrid) -> torch.Tensor:
    """``[n, n_out]`` the logits summed over the grid rows with each answer index ``v``.

    Every function of the answer index ``s`` is constant on these row groups, so projections of
    the logits onto such functions need only this ``n × n_out`` summary.
    """
    lg = logits.double()
    return torch.zeros(grid.n, lg.shape[1], dtype=torch.float64).index_add_(0, grid.target, lg)


def sum_counts(grid: OperationGrid) -> torch.Tensor:
    """``[n]`` how many grid rows have each answer index (``n`` each, except for quad)."""
    return torch.bincount(grid.target, minlength=grid.n).double()


def project_on_sum(
    profile: torch.Tensor, counts: torch.Tensor, funcs: torch.Tensor
) -> torch.Tensor:
    """Coefficients ``C [m, n_out]`` of the least-squares projection onto ``funcs(s)``.

    The projection of the logits onto the span of the columns ``funcs[s]`` (row vectors over the
    grid) is ``funcs[s] @ C``; ``C = (Fᵀ diag(counts) F)⁻¹ Fᵀ profile``. The columns need not be
    orthogonal (they are not for quad), and a dependent column is handled by the pseudo-inverse.
    """
    if funcs.shape[1] == 0:
        return torch.zeros(0, profile.shape[1], dtype=torch.float64)
    gram = funcs.T @ (counts[:, None] * funcs)
    return torch.linalg.pinv(gram, hermitian=True) @ (funcs.T @ profile)


def logit_frequency_power(logits: torch.Tensor, grid: OperationGrid) -> torch.Tensor:
    """Squared norm of the logits along ``cos/sin(w_k s)`` per frequency → ``[n_freqs + 1]``.

    ``logits`` is ``[n·n, n]`` (grid rows × answer classes in index order). Index 0 is unused
    (0). This is the power the generalising circuit puts into each frequency.
    """
    profile, counts = sum_profile(logits, grid), sum_counts(grid)
    out = torch.zeros(grid.n // 2 + 1, dtype=torch.float64)
    for k in range(1, grid.n // 2 + 1):
        f = sum_functions(grid.n, [k])
        c = project_on_sum(profile, counts, f)
        # |F[s] C|² = Σ_v counts_v |F_v C|²
        out[k] = (counts[:, None] * (f @ c).pow(2)).sum()
    return out


def key_frequencies(
    power: torch.Tensor, *, min_gap: float = KEY_FREQ_MIN_GAP, max_freqs: int = KEY_FREQ_MAX
) -> list[int]:
    """The frequencies above the largest gap in logit power, ascending; ``[]`` if none is sparse.

    ``power`` is :func:`logit_frequency_power` (index = frequency; index 0 is ignored). Rule:
    sort the powers in descending order ``P_1 ≥ P_2 ≥ …`` and take the log gaps
    ``log10(P_m / P_{m+1})`` for ``m = 1 .. min(max_freqs, ⌊n_freqs/2⌋)``. The key frequencies
    are the top ``m`` at the largest of these gaps, provided it spans at least ``min_gap``
    decades; otherwise no sparse set stands out and the result is empty.

    Why a gap and not a fraction of the strongest power: a grokked network's key frequencies can
    differ among themselves by far more than an order of magnitude, while all of them stand well
    above the rest. A canonical transformer after 100k steps at weight decay 0.1 had powers
    7.1e8, 6.4e7, 3.4e7, 2.7e7, 1.9e7, then 3.5e5: log gaps 1.04, 0.28, 0.10, 0.15 and 1.74
    decades, so the rule keeps all five (a cut at 0.1 × the strongest kept one). An untrained or
    memorising network spreads its power over every frequency: the top powers of such a noise
    spectrum differ by small factors (a gap of a decade among the strongest few would need one
    frequency to carry ~10× the power of the next), so the result is empty — the signal that no
    sparse circuit exists (yet). The cap stops the rule from cutting in the low tail of a noise
    spectrum, where the smallest powers can differ by any factor.
    """
    p = power.double().clone()
    p[0] = 0.0
    top = float(p.max())
    n_freqs = len(p) - 1
    cap = min(int(max_freqs), n_freqs // 2)
    if top <= 0 or cap < 1:
        return []
    values, order = p[1:].sort(descending=True)
    # Powers are floored at 1e-30 × the strongest (below float64 rounding of the logits), so an
    # exactly zero power (a pure synthetic circuit) is a finite gap of 30 decades.
    logs = values[: cap + 1].clamp_min(top * 1e-30).log10()
    gaps = logs[:-1] - logs[1:]  # gaps[m - 1] = log10(P_m / P_{m+1})
    m = int(gaps.argmax()) + 1
    if float(gaps[m - 1]) < min_gap:
        return []
    return sorted(int(k) + 1 for k in order[:m])


def key_frequencies_above(power: torch.Tensor, fraction: float) -> list[int]:
    """Frequencies whose logit power is at least ``fraction`` × the strongest one's, ascending.

    The former key-frequency rule (with ``fraction = 0.1``), kept to compare against
    :func:`key_frequencies`: it drops every key frequency more than ``1/fraction`` weaker
    than the strongest.
    """
    p = power.double().clone()
    p[0] = 0.0
    top = float(p.max())
    if top <= 0:
        return []
    return [int(k) for k in torch.nonzero(p >= fraction * top).flatten()]


@dataclass(frozen=True)
class LogitFit:
    """The fit ``logit(a, b, c) ≈ Σ_k A_k cos(w_k(s(a, b) − c))``.

    Attributes:
        freqs: the frequencies fitted.
        coef: ``A_k`` per frequency.
        fve: fraction of the (per-row centred) logit variance explained.
    """

    freqs: tuple[int, ...]
    coef: tuple[float, ...]
    fve: float


def logit_fit(logits: torch.Tensor, grid: OperationGrid, freqs: list[int]) -> LogitFit:
    """Least-squares fit of ``Σ_k A_k cos(w_k(s − c))`` to the logits.

    Logits are centred over the classes of each row first (a constant per row changes no
    prediction); the fraction of variance explained is ``1 − |L − fit|² / |L|²`` of the
    centred logits, over every grid row and answer class.

    Args:
        logits: ``[n·n, n]`` grid rows × answer classes in index order.
        grid: the operation grid.
        freqs: the frequencies to fit.
    """
    lc = logits.double() - logits.double().mean(dim=1, keepdim=True)
    ss_tot = float(lc.pow(2).sum())
    if not freqs or ss_tot <= 0:
        return LogitFit(tuple(int(k) for k in freqs), tuple(0.0 for _ in freqs), 0.0)
    # The design columns cos(w_k(s − c)) depend on the row only through s, so the normal
    # equations need only the n × n profile of the centred logits.
    profile, counts = sum_profile(lc, grid), sum_counts(grid)
    v = torch.arange(grid.n, dtype=torch.float64)
    diff = v[:, None] - v[None, :]  # [v, c]
    table = torch.stack([torch.cos(2 * math.pi * k / grid.n * diff) for k in freqs])  # [K, v, c]
    xty = torch.einsum("kvc,vc->k", table, profile)
    xtx = torch.einsum("jvc,kvc,v->jk", table, table, counts)
    coef = torch.linalg.pinv(xtx, hermitian=True) @ xty
    resid = ss_tot - 2 * float(coef @ xty) + float(coef @ xtx @ coef)
    return LogitFit(
        tuple(int(k) for k in freqs), tuple(float(a) for a in coef), 1.0 - resid / ss_tot
    )
