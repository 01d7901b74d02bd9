"""Report figures: one plotly function per figure.

Every function here draws analysis *outputs* — metrics tables, progress tables, arrays of
Fourier norms, LLC tables — and nothing else: no training, no checkpoint loading, no
analysis. :mod:`groklab.report.collect` gathers those outputs from a run or sweep directory;
:mod:`groklab.report.html` puts the figures into one HTML file and exports them as PNG/SVG.

Long curves are thinned to at most ``max_points`` points per trace (a mix of evenly spaced
and log-spaced steps, so both log and linear step axes keep their shape); rolling averages
are computed on the full curve before thinning, and marked events (spikes, phase changes)
are drawn at their exact steps, so thinning never hides them.

Modules, one subject each: :mod:`~groklab.report.figures.training` (loss, accuracy and weight
norms), :mod:`~groklab.report.figures.fourier` (progress measures and the Fourier circuit),
:mod:`~groklab.report.figures.llc` (the LLC and its diagnostics),
:mod:`~groklab.report.figures.sweeps` (sweeps), :mod:`~groklab.report.figures.studies`
(the shipped studies' own figures) and :mod:`~groklab.report.figures.common` (colours, layout,
thinning and smoothing).

These are the only figure definitions of the package: the HTML report embeds them, and the
static files that ``groklab analyze``, ``groklab llc`` and ``groklab sweep`` write are the
same figure objects exported by :mod:`groklab.report.static`.
"""

from __future__ import annotations

try:  # before any submodule: every one of them draws with plotly
    import plotly.graph_objects as _go  # noqa: F401
    import plotly.subplots as _subplots  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "reports need plotly: pip install 'groklab[plot]'", name=e.name
    ) from None

from groklab.report.figures.common import _CYCLE as _CYCLE  # used by report.collect
from groklab.report.figures.common import (
    DEFAULT_MAX_POINTS,
    Band,
    PhaseMark,
    thin_indices,
)
from groklab.report.figures.common import smooth as smooth  # used by tests
from groklab.report.figures.fourier import (
    embedding_pcs,
    fourier_2d,
    fourier_norms,
    neuron_clusters,
    progress_measures,
)
from groklab.report.figures.llc import llc_calibration, llc_curve, llc_diagnostics, llc_traces
from groklab.report.figures.studies import (
    loss_spikes,
    omnigrok_curves,
    per_op_loss,
    phase_diagram,
    steps_vs_variable,
)
from groklab.report.figures.sweeps import (
    grokking_vs_variable,
    llc_by_ratio,
    overlaid_curves,
    ratio_colour,
)
from groklab.report.figures.training import accuracy_curves, loss_curves, weight_norms

__all__ = [
    "DEFAULT_MAX_POINTS",
    "Band",
    "PhaseMark",
    "accuracy_curves",
    "embedding_pcs",
    "fourier_2d",
    "fourier_norms",
    "grokking_vs_variable",
    "llc_by_ratio",
    "llc_calibration",
    "llc_curve",
    "llc_diagnostics",
    "llc_traces",
    "loss_curves",
    "loss_spikes",
    "neuron_clusters",
    "omnigrok_curves",
    "overlaid_curves",
    "per_op_loss",
    "phase_diagram",
    "progress_measures",
    "ratio_colour",
    "steps_vs_variable",
    "thin_indices",
    "weight_norms",
]
