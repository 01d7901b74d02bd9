"""Static (PNG) figures of the reverse-engineered circuit and the progress measures.

Every function here only draws: it takes analysis outputs (a
:class:`~groklab.analysis.progress.Snapshot`, a progress table, :class:`~groklab.analysis.phases.
Phases`) and returns a matplotlib ``Figure``; nothing is trained or analysed while plotting.
Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot), so no global backend
or figure registry is touched. Needs the ``plot`` extra (``pip install 'groklab[plot]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from groklab.errors import GroklabError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from groklab.analysis.phases import Phases
    from groklab.analysis.progress import Snapshot

__all__ = [
    "analysis_figures",
    "fig_embedding_pcs",
    "fig_fourier_2d",
    "fig_fourier_norms",
    "fig_neuron_clusters",
    "fig_progress",
    "save_figures",
]

_PHASE_COLOURS = {"memorisation": "#f4cccc", "circuit formation": "#fff2cc", "cleanup": "#d9ead3"}


def _figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise GroklabError(
            "figures need matplotlib; install it with: pip install 'groklab[plot]'"
        ) from None
    return Figure(**kwargs)


def _title(snap: Snapshot) -> str:
    log = f", discrete log base {snap.generator}" if snap.generator is not None else ""
    return f"{snap.op} (step {snap.step}{log})"


def _freq_ticks(labels: Sequence[str], max_ticks: int) -> tuple[list[int], list[str]]:
    """Tick positions at ``const`` and at each frequency's ``cos`` row, labelled by frequency."""
    pos = [i for i, lab in enumerate(labels) if lab == "const" or lab.startswith("cos")]
    step = max(1, math.ceil(len(pos) / max_ticks))
    pos = pos[::step]
    return pos, ["c" if labels[i] == "const" else labels[i].split()[1] for i in pos]


def _component_bars(
    ax: Any, norms: Sequence[float], labels: Sequence[str], keys: set[int], what: str
) -> None:
    freqs = [0 if lab == "const" else int(lab.split()[1]) for lab in labels]
    colours = ["#cc0000" if f in keys else "#4a6fa5" for f in freqs]
    ax.bar(range(len(norms)), norms, color=colours, width=0.9)
    ticks, names = _freq_ticks(labels, 40)
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_xlabel("component: constant (c), then cos k, sin k for each frequency k", fontsize=8)
    ax.set_ylabel("norm")
    ax.set_title(f"{what} in the 1D Fourier basis (key frequencies in red)", fontsize=10)


def fig_fourier_norms(snap: Snapshot) -> Figure:
    """Norm of each Fourier component of ``W_E`` (over the input) and ``W_L`` (over the output)."""
    rows = 2 if snap.wl_component_norms is not None else 1
    fig = _figure(figsize=(11, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    keys = set(snap.key_freqs)
    _component_bars(axes[0], snap.we_component_norms, snap.component_labels, keys, "W_E")
    axes[0].text(0.99, 0.9, f"Gini {snap.gini_W_E:.3f}", transform=axes[0].transAxes, ha="right")
    if snap.wl_component_norms is not None:
        _component_bars(
            axes[1], snap.wl_component_norms, snap.component_labels, keys, "W_L = W_out·W_U"
        )
        axes[1].text(
            0.99, 0.9, f"Gini {snap.gini_W_L:.3f}", transform=axes[1].transAxes, ha="right"
        )
    fig.suptitle(f"Fourier norms — {_title(snap)}")
    return fig


def fig_neuron_clusters(snap: Snapshot) -> Figure:
    """Neurons per frequency cluster, and each neuron's share in its best frequency."""
    fig = _figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if snap.neuron_freq is None:
        ax1.text(0.5, 0.5, "no MLP neurons", ha="center")
        return fig
    counts = snap.cluster_counts()
    n_un = len(snap.neuron_freq) - sum(counts.values())
    names = [str(k) for k in counts] + ["unclustered"]
    ax1.bar(names, [*counts.values(), n_un], color=["#4a6fa5"] * len(counts) + ["#999999"])
    ax1.set_xlabel("frequency")
    ax1.set_ylabel("neurons")
    ax1.set_title(
        f"clusters (share ≥ {snap.cluster_threshold}): {snap.clustered_share:.1%} clustered",
        fontsize=10,
    )
    order = sorted(
        range(len(snap.neuron_share)), key=lambda i: (snap.neuron_freq[i], -snap.neuron_share[i])
    )
    ax2.scatter(
        range(len(order)),
        [snap.neuron_share[i] for i in order],
        c=[snap.neuron_freq[i] for i in order],
        cmap="tab20",
        s=6,
    )
    ax2.axhline(snap.cluster_threshold, color="k", lw=0.8, ls="--")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("neuron (sorted by frequency)")
    ax2.set_ylabel("share of centred norm² in its frequency")
    fig.suptitle(f"Neuron frequency clusters — {_title(snap)}")
    return fig


def _heat(
    fig: Any, ax: Any, grid: Sequence[Sequence[float]], labels: Sequence[str], title: str
) -> None:
    im = ax.imshow(grid, cmap="Blues", origin="upper")
    ticks, names = _freq_ticks(labels, 20)
    ax.set_xticks(ticks, names, fontsize=6)
    ax.set_yticks(ticks, names, fontsize=6)
    ax.set_xlabel("b component (frequency; c = constant)")
    ax.set_ylabel("a component (frequency)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


def fig_fourier_2d(snap: Snapshot) -> Figure:
    """2D Fourier norms (over the operand grid) of the neuron activations and of the logits."""
    panels = [(snap.logit_fourier_2d, "logits (norm over classes)")]
    if snap.neuron_fourier_2d is not None:
        panels.insert(0, (snap.neuron_fourier_2d, "neuron activations (norm over neurons)"))
    fig = _figure(figsize=(6 * len(panels), 5.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (grid, title) in zip(axes, panels, strict=True):
        _heat(fig, ax, grid, snap.component_labels, title)
    fig.suptitle(f"2D Fourier components, centred — {_title(snap)}")
    return fig


def fig_embedding_pcs(snap: Snapshot) -> Figure:
    """W_E on its first two principal components, and on each key frequency's cos/sin plane."""
    n_circ = len(snap.circles)
    cols = 1 + min(n_circ, 5)
    fig = _figure(figsize=(3.6 * cols, 3.8), layout="constrained")
    axes = fig.subplots(1, cols, squeeze=False)[0]
    idx = list(range(snap.n))

    def scatter(ax: Any, xy: Sequence[Sequence[float]], title: str) -> None:
        x, y = [p[0] for p in xy], [p[1] for p in xy]
        ax.scatter(x, y, c=idx, cmap="twilight", s=12)
        for i in range(0, snap.n, max(1, snap.n // 8)):
            ax.annotate(str(snap.residues[i]), (x[i], y[i]), fontsize=6)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(title, fontsize=9)

    ex = snap.pca_explained
    scatter(axes[0], snap.pca_coords, f"PC1/PC2 ({ex[0]:.0%}, {ex[1]:.0%} of variance)")
    axes[0].set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    for ax, (k, xy) in zip(axes[1:], list(snap.circles.items())[:5], strict=False):
        scatter(ax, xy, f"cos/sin plane of frequency {k}")
    index = "discrete-log index" if snap.generator is not None else "residue"
    fig.suptitle(f"Embedding W_E (colour = {index}) — {_title(snap)}")
    return fig


def _bands(ax: Any, phases: Phases | None, last_step: int, *, label: bool) -> None:
    if phases is None:
        return
    spans = [("memorisation", phases.memorisation), ("circuit formation", phases.circuit_formation)]
    if phases.cleanup is not None:
        spans.append(("cleanup", phases.cleanup))
    for name, (a, b) in spans:
        ax.axvspan(
            a,
            last_step if b is None else b,
            color=_PHASE_COLOURS[name],
            alpha=0.6,
            lw=0,
            label=name if label else None,
        )
    if phases.grokking_step is not None:
        ax.axvline(
            phases.grokking_step, color="k", ls=":", lw=1, label="grokking" if label else None
        )


def fig_progress(
    table: pd.DataFrame,
    *,
    op: str,
    phases: Phases | None = None,
    key_freqs: Sequence[int] = (),
) -> Figure:
    """Progress measures over training (one operation) with the phases as bands."""
    t = table.sort_values("step")
    step = t["step"]
    last = int(step.iloc[-1])
    # A fixed layout: constrained layout would draw the four log axes twice.
    fig = _figure(figsize=(12, 8.5))
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.06, top=0.93, hspace=0.12, wspace=0.14)
    (a1, a2), (a3, a4) = fig.subplots(2, 2, sharex=True)
    for ax in (a1, a2, a3, a4):
        _bands(ax, phases, last, label=ax is a1)

    def line(ax: Any, col: str, label: str, **kw: Any) -> None:
        if col in t:
            ax.plot(step, t[col], label=label, **kw)

    line(a1, f"{op}/train_loss", "train")
    line(a1, f"{op}/test_loss", "test")
    line(a1, f"{op}/restricted_loss", "restricted (test)")
    line(a1, f"{op}/excluded_loss", "excluded (train)")
    a1.set_yscale("log")
    a1.set_title("losses", fontsize=10)
    a1.legend(fontsize=7, ncol=2)

    line(a2, f"{op}/train_loss", "train", color="k", lw=1.5)
    for k in key_freqs:
        line(a2, f"{op}/excluded_loss/k{k}", f"excluding {k}", lw=1)
    a2.set_yscale("log")
    a2.set_title("excluded loss per key frequency (train)", fontsize=10)
    a2.legend(fontsize=7, ncol=2)

    line(a3, "sumsq/total", "total", color="k", lw=1.5)
    for col in t.columns:
        if (
            col.startswith("sumsq/")
            and col != "sumsq/total"
            and t[col].max() > 0.01 * t["sumsq/total"].max()
        ):
            line(a3, col, col.removeprefix("sumsq/"), lw=1)
    a3.set_yscale("log")
    a3.set_title("sum of squared weights", fontsize=10)
    a3.legend(fontsize=6, ncol=2)
    a3.set_xlabel("step")

    line(a4, f"{op}/gini_W_E", "Gini of W_E Fourier norms")
    line(a4, f"{op}/gini_W_L", "Gini of W_L Fourier norms")
    line(a4, f"{op}/logit_fve", "logit fit: variance explained")
    line(a4, f"{op}/test_acc", "test accuracy", ls="--", lw=1)
    a4.set_ylim(-0.02, 1.02)
    a4.set_title("sparsity and fit", fontsize=10)
    a4.legend(fontsize=7)
    a4.set_xlabel("step")
    keys = ", ".join(map(str, key_freqs)) or "none"
    fig.suptitle(f"Progress measures — {op} (key frequencies {keys})")
    return fig


def analysis_figures(
    snapshots: dict[str, Snapshot],
    table: pd.DataFrame | None,
    phases: Phases | None = None,
    key_freqs: dict[str, list[int]] | None = None,
) -> dict[str, Figure]:
    """Every figure of ``groklab analyze``, named ``<figure>`` (``<figure>_<op>`` when mixed)."""
    figs: dict[str, Figure] = {}
    mixed = len(snapshots) > 1
    for op, snap in snapshots.items():
        sfx = f"_{op}" if mixed else ""
        figs[f"fourier_norms{sfx}"] = fig_fourier_norms(snap)
        figs[f"neuron_clusters{sfx}"] = fig_neuron_clusters(snap)
        figs[f"fourier_2d{sfx}"] = fig_fourier_2d(snap)
        figs[f"embedding_pcs{sfx}"] = fig_embedding_pcs(snap)
        if table is not None:
            keys = (key_freqs or {}).get(op, snap.key_freqs)
            figs[f"progress{sfx}"] = fig_progress(table, op=op, phases=phases, key_freqs=keys)
    return figs


def save_figures(figs: dict[str, Figure], folder: str | Path, *, dpi: int = 110) -> list[Path]:
    """Write each figure as ``<folder>/<name>.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fig in figs.items():
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.png.tmp"
        fig.savefig(tmp, dpi=dpi, format="png")
        tmp.replace(path)
        out.append(path)
    return out
