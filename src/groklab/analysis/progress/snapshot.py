"""The circuit of one operation at one checkpoint (:func:`circuit_snapshot`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from groklab.analysis import fourier as fr
from groklab.analysis.progress.logits import grid_logits, neuron_hook_name
from groklab.errors import ConfigError


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
