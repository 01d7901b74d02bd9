"""The progress measures over the checkpoints of a run (:func:`progress_measures`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from groklab.analysis import fourier as fr
from groklab.analysis.progress.logits import grid_logits
from groklab.analysis.progress.selection import resolve_key_freqs
from groklab.errors import ConfigError
from groklab.run import select_steps


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
        every: analyse the checkpoints at multiples of ``every`` steps, plus the first and the
            last (:func:`groklab.run.select_steps`).
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
