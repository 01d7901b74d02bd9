"""Progress measures over every checkpoint of a run, and the circuit at one checkpoint.

:func:`progress_measures` walks the checkpoints of a saved run and, for each operation of the
task, records (Nanda et al. 2023, §5):

* ``{op}/train_loss``, ``{op}/train_acc``, ``{op}/test_loss``, ``{op}/test_acc`` — on that
  operation's grid rows of each split;
* ``{op}/restricted_loss`` (test rows) and ``{op}/restricted_train_loss`` — the logits
  projected onto the constant (the mean correction) and the ``cos(w_k s), sin(w_k s)``
  directions of the key frequencies only, i.e. the generalising circuit alone;
* ``{op}/excluded_loss`` (train rows) — the logits with exactly those directions removed —
  and ``{op}/excluded_loss/k{f}`` with only frequency ``f``'s two directions removed;
* ``{op}/logit_fve`` — the variance of the logits explained by ``Σ_k A_k cos(w_k(s − c))``;
* ``{op}/gini_W_E``, ``{op}/gini_W_L`` — Gini coefficient of the Fourier norms per frequency
  of the embedding and of the neuron-logit map (sparsity);
* ``{op}/key_freqs`` — the key frequencies read off that checkpoint alone (space-separated;
  empty when no sparse set stands out);
* ``sumsq/<param>`` and ``sumsq/total`` — the sum of squared weights.

``s`` is the answer index (``a + b`` for addition; see :mod:`groklab.analysis.fourier`). The
restricted/excluded/logit-fit measures use one key-frequency set per operation, by default the
one read off the run's final checkpoint. All losses here are cross-entropies over the ``n``
answer classes (the residues, or the non-zero residues for mul/div), as in the published
analysis; they differ from ``metrics.parquet`` only by the probability a model puts on the
``=``/operation tokens, which a trained model makes negligible.

Speed: one forward pass over the whole operand grid per checkpoint (all operations at once);
every measure is then a function of those logits, and every projection onto functions of the
answer index needs only an ``n × n`` summary of the logits (:func:`~groklab.analysis.fourier.
sum_profile`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from groklab.analysis import fourier as fr
from groklab.errors import ConfigError

__all__ = [
    "ANALYSIS_VERSION",
    "Analysis",
    "Progress",
    "Snapshot",
    "analyze_run",
    "circuit_snapshot",
    "excluded_logits",
    "excluded_loss",
    "grid_logits",
    "neuron_hook_name",
    "progress_measures",
    "resolve_key_freqs",
    "restricted_logits",
    "restricted_loss",
    "select_steps",
    "split_metrics",
]

#: Bumped whenever a measure's definition changes, so cached results are recomputed.
ANALYSIS_VERSION = 2


# --------------------------------------------------------------------------- pure measures
def _answer_logits(logits: torch.Tensor, grid: fr.OperationGrid) -> torch.Tensor:
    """``[rows, n]`` the logits of the answer classes in index order, float64."""
    return logits[..., grid.residues].double()


def split_metrics(
    logits: torch.Tensor, grid: fr.OperationGrid, rows: torch.Tensor
) -> tuple[float, float]:
    """Cross-entropy and accuracy of answer-class logits ``[n·n, n]`` on the masked rows."""
    if not bool(rows.any()):
        return math.nan, math.nan
    lg, y = logits[rows].double(), grid.target[rows]
    loss = F.cross_entropy(lg, y).item()
    acc = (lg.argmax(dim=1) == y).double().mean().item()
    return loss, acc


def restricted_logits(
    logits: torch.Tensor, grid: fr.OperationGrid, freqs: Sequence[int]
) -> torch.Tensor:
    """The logits projected onto ``1, cos(w_k s), sin(w_k s)`` for ``k`` in ``freqs``.

    Keeping the constant is the mean correction: every class keeps its mean logit over the
    grid, so only the input-dependent part is restricted to the generalising directions.
    """
    funcs = fr.sum_functions(grid.n, list(freqs), constant=True)
    c = fr.project_on_sum(fr.sum_profile(logits, grid), fr.sum_counts(grid), funcs)
    return funcs[grid.target] @ c


def excluded_logits(
    logits: torch.Tensor, grid: fr.OperationGrid, freqs: Sequence[int]
) -> torch.Tensor:
    """The logits with their ``cos(w_k s), sin(w_k s)`` components removed for ``k`` in ``freqs``."""
    funcs = fr.sum_functions(grid.n, list(freqs))
    c = fr.project_on_sum(fr.sum_profile(logits, grid), fr.sum_counts(grid), funcs)
    return logits.double() - funcs[grid.target] @ c


def restricted_loss(
    logits: torch.Tensor,
    grid: fr.OperationGrid,
    freqs: Sequence[int],
    *,
    rows: torch.Tensor | None = None,
) -> float:
    """Loss of :func:`restricted_logits` on ``rows`` (default: the test rows)."""
    rows = grid.test if rows is None else rows
    return split_metrics(restricted_logits(logits, grid, freqs), grid, rows)[0]


def excluded_loss(
    logits: torch.Tensor,
    grid: fr.OperationGrid,
    freqs: Sequence[int],
    *,
    rows: torch.Tensor | None = None,
) -> float:
    """Loss of :func:`excluded_logits` on ``rows`` (default: the training rows)."""
    rows = grid.train if rows is None else rows
    return split_metrics(excluded_logits(logits, grid, freqs), grid, rows)[0]


# --------------------------------------------------------------------------- model plumbing
def neuron_hook_name(model: torch.nn.Module) -> str | None:
    """The hook point of the last MLP's neuron activations (``None`` without an MLP)."""
    names = [n for n in model.hook_names if n.endswith("mlp.hook_post")]
    if not names:
        names = [n for n in model.hook_names if n.startswith("layers.") and n.endswith("hook_post")]
    return names[-1] if names else None


def grid_logits(
    model: torch.nn.Module,
    grids: Sequence[fr.OperationGrid],
    *,
    hook: str | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One forward pass over every grid's rows → answer-class logits per grid (and activations).

    Returns:
        ``[n·n, n]`` float64 logits per grid, and (with ``hook``) the hook's activation at the
        answer position ``[n·n, d]`` per grid.
    """
    tokens = torch.cat([g.tokens for g in grids])
    with torch.no_grad():
        if hook is None:
            logits, acts = model(tokens, n_scored=1), None
        else:
            logits, cache = model.run_with_cache(tokens, names=[hook], n_scored=1)
            acts = cache[hook]
            acts = (
                acts[:, -1]
                if acts.dim() == 3
                else acts.reshape(len(tokens), -1, acts.shape[-1])[:, -1]
            )
    logits = logits[:, -1]
    out, acts_out, start = [], [] if acts is not None else None, 0
    for g in grids:
        stop = start + len(g.tokens)
        out.append(_answer_logits(logits[start:stop], g))
        if acts_out is not None:
            acts_out.append(acts[start:stop].double())
        start = stop
    return out, acts_out


def _weight_sumsq(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {f"sumsq/{k}": float(v.double().pow(2).sum()) for k, v in weights.items()}
    out["sumsq/total"] = sum(out.values())
    return out


def _ginis(
    weights: dict[str, torch.Tensor], grid: fr.OperationGrid, basis: fr.FourierBasis
) -> tuple[float, float]:
    w_e = fr.frequency_norms(fr.fourier_1d(fr.embedding_matrix(weights, grid), basis), basis)
    w_l = fr.neuron_logit_map(weights, grid)
    g_l = (
        math.nan
        if w_l is None
        else fr.gini(fr.frequency_norms(fr.fourier_1d(w_l, basis, dim=1), basis, dim=1)[1:])
    )
    return fr.gini(w_e[1:]), g_l


# --------------------------------------------------------------------------- over checkpoints
@dataclass(frozen=True, eq=False)
class Progress:
    """Progress measures of a run.

    Attributes:
        table: one row per analysed checkpoint (columns: see the module docstring).
        key_freqs: the key frequencies used per operation.
        ops: the operations analysed.
        generators: the discrete-log generator per operation (``None`` for add/sub/quad).
        steps: the analysed checkpoint steps.
        seconds: wall time of the computation.
    """

    table: pd.DataFrame
    key_freqs: dict[str, list[int]]
    ops: list[str]
    generators: dict[str, int | None] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    seconds: float = 0.0


def select_steps(
    available: Sequence[int], *, every: int = 1, steps: Sequence[int] | None = None
) -> list[int]:
    """The checkpoints to analyse: ``steps`` if given, else every ``every``-th one.

    The first and the final checkpoint are always included.
    """
    if every < 1:
        raise ConfigError(f"--every={every} is not allowed; must be >= 1")
    avail = list(available)
    if not avail:
        return []
    if steps is not None:
        missing = sorted(set(steps) - set(avail))
        if missing:
            raise ConfigError(
                f"no checkpoint at step {missing[0]}; available: {avail[0]}..{avail[-1]}"
            )
        return sorted(set(steps))
    return sorted(set(avail[::every]) | {avail[0], avail[-1]})


def resolve_key_freqs(
    key_freqs: Sequence[int] | dict[str, Sequence[int]] | None,
    ops: Sequence[str],
    final_logits: dict[str, torch.Tensor],
    grids: dict[str, fr.OperationGrid],
    *,
    min_gap: float = fr.KEY_FREQ_MIN_GAP,
) -> dict[str, list[int]]:
    """Key frequencies per operation: given ones, or read off ``final_logits``."""
    out: dict[str, list[int]] = {}
    for op in ops:
        given = key_freqs.get(op) if isinstance(key_freqs, dict) else key_freqs
        if given is None:
            power = fr.logit_frequency_power(final_logits[op], grids[op])
            out[op] = fr.key_frequencies(power, min_gap=min_gap)
        else:
            bad = [k for k in given if not 1 <= int(k) <= grids[op].n // 2]
            if bad:
                raise ConfigError(
                    f"key frequency {bad[0]} is not allowed for {op}; allowed: 1..{grids[op].n // 2}"
                )
            out[op] = sorted({int(k) for k in given})
    return out


class _Plan:
    """Everything about one operation's measures that does not depend on the weights.

    Every projection used here is onto functions of the answer index ``s``, so it maps the
    ``n × n_out`` profile of the logits (:func:`~groklab.analysis.fourier.sum_profile`) to an
    ``n × n_out`` table ``V`` whose row ``s_r`` is the projected logit row ``r``. Restricted
    logits are therefore scored on ``n`` distinct rows; only the excluded loss and the plain
    losses touch every grid row.
    """

    def __init__(self, grid: fr.OperationGrid, keys: list[int], *, min_gap: float) -> None:
        self.grid, self.keys, self.min_gap = grid, keys, min_gap
        self.counts = fr.sum_counts(grid)
        self.target = grid.target
        self.train_idx = torch.nonzero(grid.train).flatten()
        self.train_target = grid.target[self.train_idx]
        self.n_train = torch.bincount(self.train_target, minlength=grid.n).double()
        self.n_test = torch.bincount(grid.target[grid.test], minlength=grid.n).double()
        self.p_restrict = self._operator(keys, constant=True)
        self.p_exclude = {"all": self._operator(keys)} | {k: self._operator([k]) for k in keys}
        # Per-frequency power: |P_k L|² = tr(A_kᵀ G_k⁺ A_k) with A_k = F_kᵀ·profile.
        self.freqs = list(range(1, grid.n // 2 + 1))
        f_all, ginv = [], []
        for k in self.freqs:
            f = fr.sum_functions(grid.n, [k])
            if f.shape[1] == 1:  # Nyquist: one function; pad to two with a zero column
                f = torch.cat([f, torch.zeros_like(f)], dim=1)
            gram = f.T @ (self.counts[:, None] * f)
            f_all.append(f)
            ginv.append(torch.linalg.pinv(gram, hermitian=True))
        self.f_all = torch.cat(f_all, dim=1)  # [n, 2·n_freqs]
        self.ginv = torch.stack(ginv)  # [n_freqs, 2, 2]
        # Logit fit: design cos(w_k(v − c)) over (answer index v, class c).
        v = torch.arange(grid.n, dtype=torch.float64)
        diff = v[:, None] - v[None, :]
        self.fit_table = (
            torch.stack([torch.cos(2 * math.pi * k / grid.n * diff) for k in keys])
            if keys
            else None
        )
        if self.fit_table is not None:
            xtx = torch.einsum("jvc,kvc,v->jk", self.fit_table, self.fit_table, self.counts)
            self.fit_xtx = xtx
            self.fit_xtx_inv = torch.linalg.pinv(xtx, hermitian=True)

    def _operator(self, freqs: list[int], *, constant: bool = False) -> torch.Tensor | None:
        """``[n, n]`` the projection onto ``funcs(s)`` acting on profiles: ``V = P @ profile``."""
        f = fr.sum_functions(self.grid.n, freqs, constant=constant)
        if f.shape[1] == 0:
            return None
        gram = f.T @ (self.counts[:, None] * f)
        return f @ torch.linalg.pinv(gram, hermitian=True) @ f.T

    def _row_loss(self, table: torch.Tensor, weights: torch.Tensor) -> float:
        """Mean CE of rows whose logits are ``table[s]`` and answer ``s``, weighted by count."""
        total = weights.sum()
        if total <= 0:
            return math.nan
        per_value = -table.log_softmax(dim=1).diagonal()
        return float((weights * per_value).sum() / total)

    def measures(self, logits: torch.Tensor) -> dict[str, Any]:
        """Every logit-based measure at one checkpoint (``logits``: ``[n·n, n]`` float64)."""
        g, op = self.grid, self.grid.op
        row: dict[str, Any] = {}
        logp = logits.log_softmax(dim=1)
        nll = -logp.gather(1, self.target[:, None]).squeeze(1)
        hit = (logits.argmax(dim=1) == self.target).double()
        for split, mask in (("train", g.train), ("test", g.test)):
            any_rows = bool(mask.any())
            row[f"{op}/{split}_loss"] = float(nll[mask].mean()) if any_rows else math.nan
            row[f"{op}/{split}_acc"] = float(hit[mask].mean()) if any_rows else math.nan

        profile = fr.sum_profile(logits, g)
        restricted = self.p_restrict @ profile  # [n, n]: restricted logits of answer index s
        row[f"{op}/restricted_loss"] = self._row_loss(restricted, self.n_test)
        row[f"{op}/restricted_train_loss"] = self._row_loss(restricted, self.n_train)

        if len(self.train_idx):
            train_logits = logits[self.train_idx]
            for name, proj in self.p_exclude.items():
                if proj is None:
                    loss = F.cross_entropy(train_logits, self.train_target).item()
                else:
                    removed = (proj @ profile)[self.train_target]
                    loss = F.cross_entropy(train_logits - removed, self.train_target).item()
                col = f"{op}/excluded_loss" if name == "all" else f"{op}/excluded_loss/k{name}"
                row[col] = loss

        if self.fit_table is None:
            row[f"{op}/logit_fve"] = 0.0
        else:
            centred = profile - profile.mean(dim=1, keepdim=True)
            # |L − rowmean|² without materialising the centred logits.
            ss_tot = float(logits.pow(2).sum() - logits.sum(dim=1).pow(2).sum() / logits.shape[1])
            xty = torch.einsum("kvc,vc->k", self.fit_table, centred)
            coef = self.fit_xtx_inv @ xty
            resid = ss_tot - 2 * float(coef @ xty) + float(coef @ self.fit_xtx @ coef)
            row[f"{op}/logit_fve"] = 1.0 - resid / ss_tot if ss_tot > 0 else 0.0

        a = (self.f_all.T @ profile).reshape(len(self.freqs), 2, -1)  # [freq, 2, n_out]
        power = torch.zeros(g.n // 2 + 1, dtype=torch.float64)
        power[1:] = torch.einsum("kic,kij,kjc->k", a, self.ginv, a)
        row[f"{op}/key_freqs"] = " ".join(map(str, fr.key_frequencies(power, min_gap=self.min_gap)))
        return row


def progress_measures(
    run: Any,
    *,
    every: int = 1,
    steps: Sequence[int] | None = None,
    key_freqs: Sequence[int] | dict[str, Sequence[int]] | None = None,
    ops: Sequence[str] | None = None,
    generators: dict[str, int] | None = None,
    min_gap: float = fr.KEY_FREQ_MIN_GAP,
    callback: Callable[[int, int], None] | None = None,
) -> Progress:
    """Compute the progress measures over the checkpoints of a saved run.

    Args:
        run: a :class:`groklab.Run` of a modular task.
        every: analyse every ``every``-th checkpoint (first and last always).
        steps: exactly these checkpoint steps instead.
        key_freqs: key frequencies (one list for all operations, or per operation); default:
            read off the run's final checkpoint by :func:`~groklab.analysis.fourier.
            key_frequencies`.
        ops: operations to analyse (default: all of the task's).
        generators: discrete-log generator per mul/div operation (default: the smallest).
        min_gap: the key-frequency rule's minimum gap in decades (see
            :func:`~groklab.analysis.fourier.key_frequencies`).
        callback: ``callback(done, total)`` after each checkpoint (progress bars).

    Raises:
        ConfigError: no checkpoints, a non-modular task, a bad step, operation or frequency.
    """
    t0 = time.perf_counter()
    available = run.checkpoint_steps
    if not available:
        raise ConfigError(f"{run.path}: no checkpoints to analyse")
    chosen = select_steps(available, every=every, steps=steps)
    task = run.task
    ops = list(ops or task.info.get("operations", []))
    generators = generators or {}
    grids = {op: fr.operation_grid(task, op, generator=generators.get(op)) for op in ops}
    bases = {op: fr.fourier_basis(g.n) for op, g in grids.items()}
    grid_list = [grids[op] for op in ops]

    model = run.model_at(available[-1])
    final = dict(zip(ops, grid_logits(model, grid_list)[0], strict=True))
    keys = resolve_key_freqs(key_freqs, ops, final, grids, min_gap=min_gap)

    plans = {op: _Plan(grids[op], keys[op], min_gap=min_gap) for op in ops}
    rows = []
    for i, step in enumerate(chosen):
        weights = run.weights_at(step)
        model.load_state_dict(weights, strict=True)
        logits = grid_logits(model, grid_list)[0]
        row: dict[str, Any] = {"step": step}
        for op, lg in zip(ops, logits, strict=True):
            row.update(plans[op].measures(lg))
            row[f"{op}/gini_W_E"], row[f"{op}/gini_W_L"] = _ginis(weights, grids[op], bases[op])
        row.update(_weight_sumsq(weights))
        rows.append(row)
        if callback is not None:
            callback(i + 1, len(chosen))
    return Progress(
        table=pd.DataFrame(rows),
        key_freqs=keys,
        ops=ops,
        generators={op: g.generator for op, g in grids.items()},
        steps=chosen,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- one checkpoint
@dataclass(frozen=True)
class Snapshot:
    """The circuit of one operation at one checkpoint (JSON-serialisable fields).

    Attributes:
        op, step, n, generator: which operation/checkpoint, the group size, the generator.
        residues: the residue at each index.
        key_freqs: the key frequencies (given, or read off this checkpoint's logits).
        logit_power: squared logit norm along ``cos/sin(w_k s)`` per frequency (index = k).
        component_labels: label of each 1D Fourier component (``const``, ``cos 1``, ...).
        we_component_norms, wl_component_norms: Fourier component norms of W_E and W_L.
        we_freq_norms, wl_freq_norms: the same per frequency (index = k).
        gini_W_E, gini_W_L: Gini coefficients of the per-frequency norms (k >= 1).
        neuron_freq, neuron_share, neuron_clustered: per neuron (see ``neuron_clusters``).
        clustered_share: share of neurons clustered.
        cluster_threshold: the threshold used.
        fit_freqs, fit_coef, fit_fve: the logit fit on the key frequencies.
        neuron_fourier_2d: ``[n][n]`` norm over neurons of the centred activations' 2D
            Fourier coefficients.
        logit_fourier_2d: ``[n][n]`` norm over classes of the grid-centred logits' 2D Fourier
            coefficients.
        pca_coords: ``[n][2]`` the embedding of each index on W_E's first two principal
            components; ``pca_explained`` their share of variance.
        circles: per key frequency, ``[n][2]`` the embedding projected on the plane of its
            ``cos``/``sin`` Fourier directions (a circle when the frequency is used).
    """

    op: str
    step: int
    n: int
    generator: int | None
    residues: list[int]
    key_freqs: list[int]
    logit_power: list[float]
    component_labels: list[str]
    we_component_norms: list[float]
    wl_component_norms: list[float] | None
    we_freq_norms: list[float]
    wl_freq_norms: list[float] | None
    gini_W_E: float
    gini_W_L: float | None
    neuron_freq: list[int] | None
    neuron_share: list[float] | None
    neuron_clustered: list[bool] | None
    clustered_share: float | None
    cluster_threshold: float
    fit_freqs: list[int]
    fit_coef: list[float]
    fit_fve: float
    neuron_fourier_2d: list[list[float]] | None
    logit_fourier_2d: list[list[float]]
    pca_coords: list[list[float]]
    pca_explained: list[float]
    circles: dict[str, list[list[float]]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        return cls(**d)

    def cluster_counts(self) -> dict[int, int]:
        """Clustered neurons per frequency."""
        if self.neuron_freq is None or self.neuron_clustered is None:
            return {}
        out: dict[int, int] = {}
        for f, c in zip(self.neuron_freq, self.neuron_clustered, strict=True):
            if c:
                out[f] = out.get(f, 0) + 1
        return dict(sorted(out.items()))


def _circle(
    emb: torch.Tensor, coeffs: torch.Tensor, basis: fr.FourierBasis, k: int
) -> torch.Tensor:
    """Embedding rows projected on the plane of frequency ``k``'s Fourier directions → [n, 2]."""
    rows = basis.rows(k)
    dirs = coeffs[rows].T  # [d, 1 or 2]: W_E's cos/sin coefficient vectors
    q, _ = torch.linalg.qr(dirs)
    out = (emb - emb.mean(0)) @ q
    if out.shape[1] == 1:
        out = torch.cat([out, torch.zeros_like(out)], dim=1)
    return out


def circuit_snapshot(
    run: Any,
    step: int | None = None,
    *,
    op: str | None = None,
    key_freqs: Sequence[int] | None = None,
    generator: int | None = None,
    min_gap: float = fr.KEY_FREQ_MIN_GAP,
    cluster_threshold: float = fr.CLUSTER_THRESHOLD,
) -> Snapshot:
    """Reverse-engineer one operation's circuit at one checkpoint (default: the final one)."""
    steps = run.checkpoint_steps
    if not steps:
        raise ConfigError(f"{run.path}: no checkpoints to analyse")
    step = steps[-1] if step is None else int(step)
    grid = fr.operation_grid(run.task, op, generator=generator)
    basis = fr.fourier_basis(grid.n)
    model = run.model_at(step)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    hook = neuron_hook_name(model)
    (logits,), acts = grid_logits(model, [grid], hook=hook)

    power = fr.logit_frequency_power(logits, grid)
    keys = (
        fr.key_frequencies(power, min_gap=min_gap)
        if key_freqs is None
        else sorted({int(k) for k in key_freqs})
    )
    emb = fr.embedding_matrix(weights, grid).double()  # [n, d]
    we_coef = fr.fourier_1d(emb, basis)
    w_l = fr.neuron_logit_map(weights, grid)
    wl_coef = None if w_l is None else fr.fourier_1d(w_l, basis, dim=1)
    we_freq = fr.frequency_norms(we_coef, basis)
    wl_freq = None if wl_coef is None else fr.frequency_norms(wl_coef, basis, dim=1)

    n = grid.n
    if acts is not None:
        a = acts[0].reshape(n, n, -1)
        cl = fr.neuron_clusters(a, basis, threshold=cluster_threshold)
        neuron_2d = fr.fourier_2d(a - a.mean(dim=(0, 1)), basis).pow(2).sum(-1).sqrt()
    else:
        cl, neuron_2d = None, None
    lg = logits.reshape(n, n, -1)
    logit_2d = fr.fourier_2d(lg - lg.mean(dim=(0, 1)), basis).pow(2).sum(-1).sqrt()
    fit = fr.logit_fit(logits, grid, keys)

    centred = emb - emb.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vh[:2].T
    explained = (s[:2].pow(2) / s.pow(2).sum().clamp_min(1e-300)).tolist()

    def lst(x: torch.Tensor | None) -> Any:
        return None if x is None else x.tolist()

    return Snapshot(
        op=grid.op,
        step=step,
        n=n,
        generator=grid.generator,
        residues=grid.residues.tolist(),
        key_freqs=keys,
        logit_power=power.tolist(),
        component_labels=basis.labels,
        we_component_norms=fr.component_norms(we_coef).tolist(),
        wl_component_norms=None if wl_coef is None else fr.component_norms(wl_coef, dim=1).tolist(),
        we_freq_norms=we_freq.tolist(),
        wl_freq_norms=lst(wl_freq),
        gini_W_E=fr.gini(we_freq[1:]),
        gini_W_L=None if wl_freq is None else fr.gini(wl_freq[1:]),
        neuron_freq=None if cl is None else cl.freq.tolist(),
        neuron_share=None if cl is None else cl.share.tolist(),
        neuron_clustered=None if cl is None else cl.clustered.tolist(),
        clustered_share=None if cl is None else cl.clustered_share,
        cluster_threshold=cluster_threshold,
        fit_freqs=list(fit.freqs),
        fit_coef=list(fit.coef),
        fit_fve=fit.fve,
        neuron_fourier_2d=lst(neuron_2d),
        logit_fourier_2d=logit_2d.tolist(),
        pca_coords=pcs.tolist(),
        pca_explained=explained,
        circles={str(k): _circle(emb, we_coef, basis, k).tolist() for k in keys},
    )


# --------------------------------------------------------------------------- cached analysis
@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything ``groklab analyze`` computes for a run.

    Attributes:
        progress: the progress measures over the checkpoints.
        snapshots: the circuit at the final checkpoint, per operation.
        phases: the training phases.
        cached: whether the progress measures came from the cache.
        paths: the cache files read or written.
    """

    progress: Progress
    snapshots: dict[str, Snapshot]
    phases: Any
    cached: bool
    paths: list[Path]


def _ckpt_stat(run: Any, step: int) -> list[int]:
    from groklab.store import CKPT_DIR, checkpoint_name

    st = (Path(run.path) / CKPT_DIR / checkpoint_name(step)).stat()
    return [step, st.st_size, st.st_mtime_ns]


def _key(payload: dict[str, Any]) -> str:
    blob = json.dumps({"version": ANALYSIS_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    from groklab.store import atomic_write_text

    # NaN (e.g. a loss on an empty split) is written as JSON's common NaN extension.
    atomic_write_text(path, json.dumps(obj, indent=1))


def analyze_run(
    run: Any,
    *,
    every: int = 1,
    key_freqs: Sequence[int] | dict[str, Sequence[int]] | None = None,
    ops: Sequence[str] | None = None,
    generators: dict[str, int] | None = None,
    force: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Analysis:
    """Progress measures, final-checkpoint snapshots and phases of a run, cached in
    ``<run>/analysis/``.

    Cache files are named by a hash of what produced them — the analysis version, the config
    hash, the analysed checkpoints (step, size, modification time) and the options — so a
    result is recomputed only when missing or stale (new checkpoints, a resumed run, other
    options, a changed analysis) or with ``force``.
    """
    from groklab.analysis.phases import find_phases
    from groklab.config import config_hash
    from groklab.store import atomic_write_bytes

    task_kind = run.config.data.task
    if task_kind != "modular":
        raise ConfigError(
            f"{run.path}: data.task={task_kind!r}; the Fourier circuit, progress measures and "
            "phases of `groklab analyze` need a modular task (data.task='modular')"
        )
    available = run.checkpoint_steps
    if not available:
        raise ConfigError(f"{run.path}: no checkpoints to analyse")
    chosen = select_steps(available, every=every)
    if hasattr(run, "check_checkpoints"):
        run.check_checkpoints(chosen)
    ops = list(ops or run.task.info.get("operations", []))
    generators = dict(generators or {})
    options = {
        "every": every,
        "key_freqs": key_freqs
        if not isinstance(key_freqs, dict)
        else dict(sorted(key_freqs.items())),
        "ops": ops,
        "generators": dict(sorted(generators.items())),
        "key_freq_rule": {"min_gap": fr.KEY_FREQ_MIN_GAP, "max": fr.KEY_FREQ_MAX},
    }
    folder = Path(run.path) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(
        {
            "config": config_hash(run.config),
            "checkpoints": [_ckpt_stat(run, s) for s in chosen],
            "options": options,
        }
    )
    table_path, meta_path = folder / f"progress-{key}.parquet", folder / f"progress-{key}.json"
    cached = not force and table_path.exists() and meta_path.exists()
    if cached:
        try:
            meta = json.loads(meta_path.read_text())
            progress = Progress(
                table=pd.read_parquet(table_path),
                key_freqs={k: list(v) for k, v in meta["key_freqs"].items()},
                ops=meta["ops"],
                generators=meta["generators"],
                steps=meta["steps"],
                seconds=meta["seconds"],
            )
        except Exception:  # a damaged cache is recomputed (and rewritten) like a stale one
            cached = False
    if not cached:
        progress = progress_measures(
            run,
            steps=chosen,
            key_freqs=key_freqs,
            ops=ops,
            generators=generators,
            callback=callback,
        )
        buf = io.BytesIO()
        progress.table.to_parquet(buf, index=False)
        atomic_write_bytes(table_path, buf.getvalue())
        meta = {
            "key": key,
            "analysis_version": ANALYSIS_VERSION,
            "key_freqs": progress.key_freqs,
            "ops": progress.ops,
            "generators": progress.generators,
            "steps": progress.steps,
            "seconds": progress.seconds,
            "options": options,
        }
        _write_json(meta_path, meta)
    paths = [table_path, meta_path]

    snapshots = {}
    final = available[-1]
    for op in ops:
        skey = _key(
            {
                "config": config_hash(run.config),
                "checkpoint": _ckpt_stat(run, final),
                "op": op,
                "key_freqs": progress.key_freqs[op],
                "generator": progress.generators.get(op),
                "cluster_threshold": fr.CLUSTER_THRESHOLD,
            }
        )
        spath = folder / f"snapshot-{op}-step{final}-{skey}.json"
        snap = None
        if not force and spath.exists():
            try:
                snap = Snapshot.from_dict(json.loads(spath.read_text()))
            except Exception:  # damaged cache: recompute
                snap = None
        if snap is not None:
            snapshots[op] = snap
        else:
            snapshots[op] = circuit_snapshot(
                run,
                final,
                op=op,
                key_freqs=progress.key_freqs[op],
                generator=progress.generators.get(op),
            )
            _write_json(spath, snapshots[op].to_dict())
        paths.append(spath)

    phases = find_phases(progress.table, ops, metrics=run.metrics)
    _write_json(folder / "phases.json", phases.to_dict())
    paths.append(folder / "phases.json")
    return Analysis(
        progress=progress, snapshots=snapshots, phases=phases, cached=cached, paths=paths
    )
