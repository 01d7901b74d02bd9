"""Omnigrok: generalisation phases, per-layer weight norms and the α × data phase table.

Omnigrok (Liu et al. 2023) made grokking happen on images: few training images, all initial
weights multiplied by a large α, weight decay. The network memorises first and generalises only
once weight decay has shrunk the weight norm to where generalising solutions live. Everything
here is a pure function of saved runs (their ``metrics``) or of a results table; the driver
that trains the α × data grid is :func:`groklab.studies.omnigrok.omnigrok_phase_diagram`; the
phase diagram of a :func:`phase_table` is drawn by :func:`groklab.report.figures.phase_diagram`.

**The phase rule** (:class:`PhaseRule`, applied by :func:`classify`). From a run's metrics:

- ``t_fit``: the first evaluated step with train accuracy ≥ ``fit_acc`` (default 0.99);
- ``t_gen``: the first evaluated step with test accuracy ≥ ``gen_acc`` (default 0.9);

and then, in this order:

1. **confusion** — ``t_fit`` never comes: the network does not even fit its training set;
2. **memorisation** — it fits, but ``t_gen`` never comes within the run;
3. **grokking** — it fits and generalises, but late: ``t_gen ≥ delay_ratio · t_fit``
   (default 2: generalising takes at least twice as long as fitting) and
   ``t_gen − t_fit ≥ min_delay`` steps (default 0; raise it to ignore delays of a few
   evaluations);
4. **comprehension** — otherwise: it generalises about when it fits, or before.

Memorisation and grokking depend on the length of the run (a longer run may turn memorisation
into grokking), and the thresholds must suit the data: a test accuracy of 0.9 is reachable on
the 8×8 digits with a few hundred training images, not with thirty.

**Per-layer norms.** The trainer logs ``wnorm/<param>`` (each tensor's L2 norm) and
``wnorm/total`` at every evaluation; :func:`layer_norms` adds them up per layer exactly
(``sqrt(Σ ‖w‖²)`` over the layer's tensors). For the MLP, ``linear_1`` is ``embed.W_E`` with
``layers.0.b``, ``linear_i`` is ``layers.{i-1}.W``/``.b``, and the last is
``unembed.W_U``/``b_U``; for other models a layer is a parameter name without its last part
(``blocks.0.attn``, ``embed``, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from groklab.errors import ConfigError, GroklabError
from groklab.run import first_step_at

if TYPE_CHECKING:  # pragma: no cover
    from groklab.run import Run

__all__ = [
    "ANALYSIS",
    "PHASES",
    "PHASE_COLOURS",
    "PhaseResult",
    "PhaseRule",
    "analyze_run",
    "classify",
    "delay_summary",
    "layer_norms",
    "layer_of",
    "phase_table",
    "settle_step",
    "sweep_phase_table",
]

PHASES = ("comprehension", "grokking", "memorisation", "confusion")
PHASE_COLOURS = {
    "comprehension": "#6aa84f",
    "grokking": "#f1c232",
    "memorisation": "#6fa8dc",
    "confusion": "#b7b7b7",
}


# ----------------------------------------------------------------------------- steps


def settle_step(metrics: pd.DataFrame, column: str, *, tol: float = 0.01) -> int | None:
    """First logged step from which ``column`` stays within ``tol`` of its final value.

    (Absolute tolerance; for an accuracy, 0.01 = one percentage point.)
    """
    if column not in metrics or metrics.empty:
        return None
    v = metrics[column].to_numpy()
    off = abs(v - v[-1]) > tol
    if not off.any():
        return int(metrics["step"].iloc[0])
    last_off = int(off.nonzero()[0][-1])
    return int(metrics["step"].iloc[last_off + 1])


# ----------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class PhaseRule:
    """Thresholds of the phase rule (module docstring).

    Attributes:
        fit_acc: train accuracy that counts as fitting the training set.
        gen_acc: test accuracy that counts as generalising.
        delay_ratio: grokking needs ``t_gen >= delay_ratio * t_fit`` ...
        min_delay: ... and ``t_gen - t_fit >= min_delay`` steps.
    """

    fit_acc: float = 0.99
    gen_acc: float = 0.9
    delay_ratio: float = 2.0
    min_delay: int = 0

    def __post_init__(self) -> None:
        for name in ("fit_acc", "gen_acc"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"PhaseRule.{name}={v!r} is not allowed; must be in (0, 1]")
        if not (self.delay_ratio >= 1 and math.isfinite(self.delay_ratio)):
            raise ConfigError(
                f"PhaseRule.delay_ratio={self.delay_ratio!r} is not allowed; must be >= 1"
            )
        if self.min_delay < 0:
            raise ConfigError(
                f"PhaseRule.min_delay={self.min_delay!r} is not allowed; must be >= 0"
            )


@dataclass(frozen=True)
class PhaseResult:
    """A run's phase and the figures it was read from.

    Attributes:
        phase: one of :data:`PHASES`.
        t_fit: first step with train accuracy ≥ ``fit_acc`` (``None`` if never).
        t_gen: first step with test accuracy ≥ ``gen_acc`` (``None`` if never).
        final_step: last logged step.
        final_train_acc, final_test_acc: accuracies at the last logged step.
        max_test_acc: best test accuracy seen.
        final_wnorm: total weight norm at the last logged step (``nan`` if not logged).
    """

    phase: str
    t_fit: int | None
    t_gen: int | None
    final_step: int
    final_train_acc: float
    final_test_acc: float
    max_test_acc: float
    final_wnorm: float


def classify(metrics: pd.DataFrame, rule: PhaseRule | None = None) -> PhaseResult:
    """The phase of one run by the documented rule (module docstring).

    Args:
        metrics: the run's metrics (``step``, ``train/acc``, ``test/acc``; ``wnorm/total``
            optional).
        rule: thresholds; the defaults of :class:`PhaseRule` when ``None``.

    Raises:
        ConfigError: the metrics are empty or lack an accuracy column.
    """
    rule = rule or PhaseRule()
    for col in ("step", "train/acc", "test/acc"):
        if col not in metrics:
            raise ConfigError(f"metrics: column {col!r} missing (needs step, train/acc, test/acc)")
    if metrics.empty:
        raise ConfigError("metrics: no rows (the run has not been evaluated yet)")
    t_fit = first_step_at(metrics, "train/acc", rule.fit_acc)
    t_gen = first_step_at(metrics, "test/acc", rule.gen_acc)
    if t_fit is None:
        phase = "confusion"
    elif t_gen is None:
        phase = "memorisation"
    elif t_gen >= rule.delay_ratio * t_fit and t_gen - t_fit >= rule.min_delay and t_gen > t_fit:
        phase = "grokking"
    else:
        phase = "comprehension"
    last = metrics.iloc[-1]
    return PhaseResult(
        phase=phase,
        t_fit=t_fit,
        t_gen=t_gen,
        final_step=int(last["step"]),
        final_train_acc=float(last["train/acc"]),
        final_test_acc=float(last["test/acc"]),
        max_test_acc=float(metrics["test/acc"].max()),
        final_wnorm=float(last["wnorm/total"]) if "wnorm/total" in metrics else math.nan,
    )


def delay_summary(
    metrics: pd.DataFrame, *, gen_acc: float = 0.9, settle_tol: float = 0.01
) -> dict[str, Any]:
    """The figures of a memorise-then-generalise run, for reports.

    Returns:
        ``train_100``: first step with train accuracy 100%; ``train_99``: ≥ 99%;
        ``test_50`` / ``test_gen``: first step with test accuracy ≥ 0.5 / ≥ ``gen_acc``;
        ``test_settle``: first step from which test accuracy stays within ``settle_tol`` of
        its final value; ``final_test_acc``, ``max_test_acc``; ``wnorm_init``,
        ``wnorm_final`` and ``wnorm_at_gen`` (total weight norm at step 0, at the end, at
        ``test_gen``).
    """
    wn = metrics.get("wnorm/total")
    t_gen = first_step_at(metrics, "test/acc", gen_acc)
    at_gen = math.nan
    if wn is not None and t_gen is not None:
        at_gen = float(wn[metrics["step"] == t_gen].iloc[0])
    return {
        "train_100": first_step_at(metrics, "train/acc", 1.0),
        "train_99": first_step_at(metrics, "train/acc", 0.99),
        "test_50": first_step_at(metrics, "test/acc", 0.5),
        "test_gen": t_gen,
        "test_settle": settle_step(metrics, "test/acc", tol=settle_tol),
        "final_test_acc": float(metrics["test/acc"].iloc[-1]),
        "max_test_acc": float(metrics["test/acc"].max()),
        "wnorm_init": float(wn.iloc[0]) if wn is not None else math.nan,
        "wnorm_final": float(wn.iloc[-1]) if wn is not None else math.nan,
        "wnorm_at_gen": at_gen,
    }


# ----------------------------------------------------------------------------- norms

_MLP_HIDDEN = re.compile(r"^layers\.(\d+)\.(W|b)$")


def layer_of(param: str, *, mlp: bool) -> str:
    """The layer a parameter belongs to (module docstring), e.g. ``layers.0.b`` → ``linear_1``.

    For the MLP the unembedding is named ``unembed`` (its index depends on the depth; see
    :func:`layer_norms`, which renames it to ``linear_<L>``).
    """
    if mlp:
        if param == "embed.W_E":
            return "linear_1"
        m = _MLP_HIDDEN.match(param)
        if m:
            return f"linear_{int(m.group(1)) + 1}"
    return param.rsplit(".", 1)[0] if "." in param else param


def layer_norms(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-layer L2 weight norms at every evaluation, from the per-tensor ``wnorm/<param>``.

    Returns:
        ``step``, one ``wnorm_layer/<layer>`` column per layer (model order) and
        ``wnorm/total``.
    """
    params = [c[len("wnorm/") :] for c in metrics.columns if c.startswith("wnorm/")]
    params = [p for p in params if p != "total"]
    if not params:
        raise ConfigError("metrics: no wnorm/<param> columns (weight norms were not logged)")
    mlp = "layers.0.b" in params and "embed.W_E" in params
    groups: dict[str, list[str]] = {}
    for p in params:
        groups.setdefault(layer_of(p, mlp=mlp), []).append(p)
    if mlp and "unembed" in groups:
        n_linear = sum(1 for g in groups if g.startswith("linear_")) + 1
        groups[f"linear_{n_linear}"] = groups.pop("unembed")
    out = {"step": metrics["step"].to_numpy()}
    for layer, members in groups.items():
        sq = sum(metrics[f"wnorm/{p}"].astype("float64") ** 2 for p in members)
        out[f"wnorm_layer/{layer}"] = sq.pow(0.5).to_numpy()
    df = pd.DataFrame(out)
    if "wnorm/total" in metrics:
        df["wnorm/total"] = metrics["wnorm/total"].to_numpy()
    return df


# ----------------------------------------------------------------------------- study


def phase_table(
    runs: Iterable[Run],
    rule: PhaseRule | None = None,
) -> pd.DataFrame:
    """One row per run: ``run``, ``alpha`` (model.init_scale), ``train_size`` (the task's
    training-set size), ``weight_decay``, ``fixed_norm``, and the :class:`PhaseResult` fields.
    """
    rows = []
    for run in runs:
        cfg = run.config
        res = classify(run.metrics, rule)
        n_train = run.manifest.get("n_train")
        rows.append(
            {
                "run": str(run.path),
                "alpha": float(cfg.model.init_scale),
                "train_size": int(n_train if n_train is not None else cfg.data.train_size or 0),
                "weight_decay": float(cfg.optim.weight_decay),
                "fixed_norm": cfg.optim.fixed_norm,
                **asdict(res),
            }
        )
    return pd.DataFrame(rows)


def analyze_run(
    run_dir: str | Path,
    *,
    fit_acc: float = 0.99,
    gen_acc: float = 0.9,
    delay_ratio: float = 2.0,
    min_delay: int = 0,
) -> dict[str, Any]:
    """Sweep analysis (``analyses = ["groklab.analysis.omnigrok:analyze_run"]``): the run's
    phase by :class:`PhaseRule` with these thresholds, and the figures it was read from."""
    from groklab.run import load_run

    rule = PhaseRule(fit_acc, gen_acc, delay_ratio, min_delay)
    run = load_run(run_dir)
    return {
        **asdict(classify(run.metrics, rule)),
        "alpha": float(run.config.model.init_scale),
        "train_size": run.manifest.get("n_train"),
    }


ANALYSIS = "groklab.analysis.omnigrok:analyze_run"


def sweep_phase_table(sweep_dir: str | Path, rule: PhaseRule | None = None) -> pd.DataFrame:
    """The :func:`phase_table` of a finished sweep's completed runs.

    ``rule`` defaults to the options the sweep spec gave :data:`ANALYSIS`
    (``[analysis_options."groklab.analysis.omnigrok:analyze_run"]``), else :class:`PhaseRule`.
    """
    import json

    from groklab.run import load_run
    from groklab.store import read_manifest

    sweep_dir = Path(sweep_dir)
    try:
        info = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no readable sweep.json)") from None
    if rule is None:
        opts = ((info.get("spec") or {}).get("analysis_options") or {}).get(ANALYSIS, {})
        rule = PhaseRule(**opts)
    names = [e["name"] for e in info.get("runs", [])]
    done = [n for n in names if read_manifest(sweep_dir / n).get("status") == "completed"]
    runs = []
    for n in done:
        try:
            runs.append(load_run(sweep_dir / n))
        except GroklabError:
            continue  # a damaged run: a failed row of the sweep's summary, not a phase
    return phase_table(runs, rule)
