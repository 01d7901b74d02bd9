"""``groklab llc DIR`` (LLC over checkpoints) and ``groklab llc calibrate DIR --step S``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from groklab.commands._common import fail as _fail
from groklab.errors import GroklabError

__all__ = ["register"]


class _DefaultRun(TyperGroup):
    """A group whose default command is ``run``: ``groklab llc DIR`` = ``groklab llc run DIR``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRun,
    no_args_is_help=True,
    help="Local learning coefficient: `groklab llc DIR` over checkpoints, "
    "`groklab llc calibrate DIR --step S` to choose the sampler settings.",
)


def _floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        _fail(f"{name}={text!r}: give comma-separated numbers, e.g. 1e-4,3e-4")
    if not vals:
        _fail(f"{name}: give at least one value")
    return vals


def _nbeta(text: str) -> float | str:
    t = text.strip()
    if t in ("n/log n", "m/log m"):
        return t
    if t in ("n", "default"):
        return "n/log n"
    if t in ("m", "batch"):
        return "m/log m"
    try:
        return float(t)
    except ValueError:
        _fail(f"--nbeta={text!r}: give a number, 'n/log n' (alias n) or 'm/log m' (alias m)")
    raise AssertionError  # unreachable


def _settings(run: Any, overrides: dict[str, Any], use_calibration: bool) -> tuple[Any, str]:
    from dataclasses import replace

    from groklab.analysis.llc import LLCSettings, load_calibration

    base, origin = LLCSettings(), "defaults"
    if use_calibration:
        cal = load_calibration(run)
        if cal is not None:
            base, rec = cal
            origin = f"calibration at step {rec.get('step')} ({rec.get('subset')})"
    given = {k: v for k, v in overrides.items() if v is not None}
    if "batch_size" in given and given["batch_size"] == 0:
        given["batch_size"] = None
    if "gamma_check" in given and given["gamma_check"] == 0:
        given["gamma_check"] = None
    if given:
        origin += " + " + ", ".join(f"{k}={v}" for k, v in given.items())
    return replace(base, **given), origin


_EPS = typer.Option("--epsilon", help="SGLD step size ε")
_GAMMA = typer.Option("--gamma", help="localisation γ")
_NBETA = typer.Option("--nbeta", help="inverse temperature: a number, 'n/log n' or 'm/log m'")
_CHAINS = typer.Option("--chains", help="chains (run together as one batch)")
_DRAWS = typer.Option("--draws", help="draws per chain")
_BURNIN = typer.Option("--burnin", help="burn-in steps per chain (discarded)")
_BATCH = typer.Option("--batch-size", help="minibatch rows per step; 0 = full batch")
_SEED = typer.Option("--seed", help="sampler seed")
_GCHECK = typer.Option(
    "--gamma-check",
    help="γ-sensitivity check: also estimate at γ/K and γ·K and report d log LLC / d log γ "
    "(default K = 3; 0 = off)",
)
_GCHAINS = typer.Option(
    "--gamma-check-chains", help="chains of each side estimate of the γ check (default: half)"
)
_DEVICE = typer.Option("--device", help="cpu, cuda or cuda:N")


@app.command("run")
def run_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    every: Annotated[
        int | None,
        typer.Option(
            "--every",
            "-e",
            help="the checkpoints at multiples of N steps, plus the first and last (default: all)",
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="exactly these checkpoint steps, e.g. 0,500,1000"),
    ] = None,
    subset: Annotated[
        list[str] | None,
        typer.Option(
            "--subset",
            help="training subset of the loss (repeatable): total, add, mul, train/add, "
            "test/add (= the training rows of addition)",
        ),
    ] = None,
    epsilon: Annotated[float | None, _EPS] = None,
    gamma: Annotated[float | None, _GAMMA] = None,
    nbeta: Annotated[str | None, _NBETA] = None,
    chains: Annotated[int | None, _CHAINS] = None,
    draws: Annotated[int | None, _DRAWS] = None,
    burnin: Annotated[int | None, _BURNIN] = None,
    batch_size: Annotated[int | None, _BATCH] = None,
    seed: Annotated[int | None, _SEED] = None,
    gamma_check: Annotated[float | None, _GCHECK] = None,
    gamma_check_chains: Annotated[int | None, _GCHAINS] = None,
    no_calibration: Annotated[
        bool,
        typer.Option("--no-calibration", help="ignore the saved calibration's recommendation"),
    ] = False,
    recompute: Annotated[bool, typer.Option("--recompute", help="ignore cached estimates")] = False,
    logx: Annotated[bool, typer.Option("--logx", help="log-scale step axis in the figure")] = False,
    device: Annotated[str, _DEVICE] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """LLC over checkpoints (cached in DIR/analysis/llc/), plotted with the test loss.

    Settings: the latest `groklab llc calibrate` recommendation if there is one, else the
    defaults; any option given here overrides it. They are recorded next to the results.
    """
    import pandas as pd
    from rich.table import Table

    from groklab.analysis import llc
    from groklab.commands._common import console, err_console
    from groklab.run import load_run, select_steps

    try:
        run = load_run(run_dir)
        settings, origin = _settings(
            run,
            {
                "epsilon": epsilon,
                "gamma": gamma,
                "nbeta": None if nbeta is None else _nbeta(nbeta),
                "chains": chains,
                "draws": draws,
                "burnin": burnin,
                "batch_size": batch_size,
                "seed": seed,
                "gamma_check": gamma_check,
                "gamma_check_chains": gamma_check_chains,
            },
            not no_calibration,
        )
        step_list = None if steps is None else [int(v) for v in _floats(steps, "--steps")]
        wanted = select_steps(run.checkpoint_steps, every=every, steps=step_list)
        if not wanted:
            _fail(f"{run_dir}: no checkpoints to analyse")
        run.check_checkpoints(wanted)
        subsets = subset or ["total"]
        names = [llc.resolve_subset(run, s)[0] for s in subsets]
        console.print(
            f"[bold]LLC[/] of {run_dir} at {len(wanted)} checkpoints, subsets {', '.join(names)}"
            f"\nsettings ({origin}): {settings.to_dict()}",
            highlight=False,
        )
        curves = {}
        for sub, name in zip(subsets, names, strict=True):
            curves[name] = _over_checkpoints(
                run, settings, wanted, sub, name, device, recompute, quiet
            )
        metrics = run.metrics
        summary = run.summary()
        for name, df in curves.items():
            t = Table(title=f"LLC ({name})", title_justify="left")
            k = settings.gamma_check
            side = (
                [
                    f"at γ={settings.gamma / k:.4g}",
                    f"at γ={settings.gamma * k:.4g}",
                    "dlogLLC/dlogγ",
                ]
                if settings.checks_gamma and k
                else []
            )
            for col in ("step", "LLC", "± chains", *side, "2nd/1st half", "below L(w*)"):
                t.add_column(col, justify="right")
            t.add_column("diverged", justify="right")
            t.add_column("L(w*)", justify="right")
            t.add_column("test loss", justify="right")
            test = dict(zip(metrics["step"], metrics.get("test/loss", []), strict=False))
            for r in df.to_dict("records"):
                tl = test.get(r["step"])
                cells = [_g(r.get("llc_gamma_lo")), _g(r.get("llc_gamma_hi")), _elast(r)]
                t.add_row(
                    str(int(r["step"])),
                    _g(r["llc"]),
                    _g(r["llc_std"]),
                    *cells[: len(side)],
                    _g(r["convergence_ratio"], 3),
                    f"{r['frac_below_init']:.1%}" if _ok(r["frac_below_init"]) else "—",
                    str(int(r["n_diverged"])) or "0",
                    _g(r.get("init_loss"), 3),
                    _g(tl),
                )
            console.print(t)
            if side:
                flagged = df.get("gamma_sensitive", pd.Series(dtype=float)).fillna(0) > 0
                if flagged.any():
                    err_console.print(
                        f"{name}: {int(flagged.sum())} of {len(df)} estimates are γ-sensitive "
                        f"(marked !: |d log LLC / d log γ| > {llc.GAMMA_SENSITIVE:g}, or a side "
                        "estimate ≤ 0): there the localisation γ, not the loss landscape, sets "
                        "the value; compare them across γ only with care",
                        highlight=False,
                    )
                else:
                    console.print(
                        f"{name}: every estimate is γ-stable (|d log LLC / d log γ| ≤ "
                        f"{llc.GAMMA_SENSITIVE:g} between γ/{k:g} and γ·{k:g})",
                        highlight=False,
                    )
            lm = llc.landmarks(df)
            console.print(
                f"{name}: peak LLC {_g(lm['peak_llc'])} at step {lm['peak_step']}; levelled off "
                f"at step {lm['level_step']} (final level {_g(lm['final_llc'])}, "
                f"{lm['level_scale']} scale)",
                highlight=False,
            )
            n_warn = int((df["warnings"].fillna("") != "").sum()) if "warnings" in df else 0
            if n_warn:
                err_console.print(
                    f"{name}: {n_warn} estimates carry warnings (see the 'warnings' column of "
                    f"the cache in {run.path / llc.LLC_DIR})",
                    highlight=False,
                )
        line = (
            f"metrics: memorised (train acc ≥ 99%) at step {summary.get('memorisation_step')}, "
            f"grokked (test acc ≥ 99%) at step {summary.get('grokking_step')}"
        )
        ph = _phases(run)
        if ph is not None:
            line += (
                f"; phases (groklab analyze): memorisation {ph.get('memorisation')}, circuit "
                f"formation {ph.get('circuit_formation')}, cleanup {ph.get('cleanup')}"
            )
        console.print(line, highlight=False)
        marks = _marks(run, summary, curves)
        from groklab.report.figures import llc_curve
        from groklab.report.static import save_figures

        label = "-".join(n.replace("/", "-") for n in names)
        stem = f"llc-{label}-{settings.key()}"
        cols = ["test/loss", "train/loss"] + [
            f"test/{n}/loss" for n in names if f"test/{n}/loss" in metrics
        ]
        fig = llc_curve(
            pd.concat([df.assign(series=k) for k, df in curves.items()], ignore_index=True),
            test_loss=metrics,
            loss_columns=cols,
            marks=marks,
            title=f"LLC over training: {run.config.name} (ε={settings.epsilon:g}, "
            f"γ={settings.gamma:g}, nβ={settings.nbeta})",
            log_x=logx,
        )
        (png,) = save_figures({stem: fig}, run.path / llc.LLC_DIR)
        console.print(f"figure: {png}\ncache: {run.path / llc.LLC_DIR}", highlight=False)
    except GroklabError as e:
        _fail(e)


def _over_checkpoints(
    run: Any,
    settings: Any,
    wanted: list[int],
    subset: str,
    name: str,
    device: str,
    recompute: bool,
    quiet: bool,
) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from groklab.analysis import llc
    from groklab.commands._common import err_console

    with Progress(
        TextColumn(f"[bold]LLC {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        console=err_console,
    ) as bar:
        task = bar.add_task(name, total=len(wanted), info="")

        def on_step(step: int, res: Any) -> None:
            info = "cached" if res is None else f"step {step}: {res.llc:.4g} ± {res.llc_std:.2g}"
            if res is not None and res.diverged:
                info += f" ({len(res.diverged)} chains diverged)"
            bar.update(task, advance=1, info=info)

        return llc.llc_over_checkpoints(
            run,
            settings,
            steps=wanted,
            subset=subset,
            device=device,
            recompute=recompute,
            on_step=on_step,
        )


def _marks(run: Any, summary: dict[str, Any], curves: dict[str, Any]) -> dict[str, int | None]:
    """Vertical lines for the figure: memorisation/grokking steps, phase boundaries if the
    phases analysis is available, and each curve's LLC peak and levelling-off."""
    from groklab.analysis import llc

    marks: dict[str, int | None] = {
        "memorised (train acc ≥ 99%)": summary.get("memorisation_step"),
        "grokked (test acc ≥ 99%)": summary.get("grokking_step"),
    }
    phases = _phases(run)
    if phases is not None:
        formation = phases.get("circuit_formation") or [None]
        marks["circuit formation starts (phases)"] = formation[0]
        cleanup = phases.get("cleanup")
        if cleanup:
            marks["cleanup starts (phases)"] = cleanup[0]
            marks["cleanup ends (phases)"] = cleanup[1]
    for name, df in curves.items():
        lm = llc.landmarks(df)
        marks[f"LLC peak ({name})"] = lm["peak_step"]
        marks[f"LLC levelled ({name})"] = lm["level_step"]
    return marks


def _phases(run: Any) -> dict[str, Any] | None:
    """Phase boundaries saved by `groklab analyze DIR` (``analysis/phases.json``), if any."""
    import json

    p = run.path / "analysis" / "phases.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _ok(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _g(v: Any, digits: int = 4) -> str:
    return f"{float(v):.{digits}g}" if _ok(v) else "—"


def _elast(row: dict[str, Any]) -> str:
    """The γ check's elasticity cell: value ± se, ``!`` when γ-sensitive."""
    e, se, flag = (
        row.get("gamma_elasticity"),
        row.get("gamma_elasticity_se"),
        row.get("gamma_sensitive"),
    )
    if not _ok(flag):
        return "—"  # cached before the check
    text = f"{float(e):.2f}" if _ok(e) else "n/a"
    if _ok(se):
        text += f" ± {float(se):.2f}"
    return text + (" !" if float(flag) > 0 else "")


@app.command("calibrate")
def calibrate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    step: Annotated[int, typer.Option("--step", help="the checkpoint to calibrate on")],
    epsilons: Annotated[
        str, typer.Option("--epsilons", help="step sizes to sweep")
    ] = "3e-5,1e-4,3e-4,1e-3",
    gammas: Annotated[
        str, typer.Option("--gammas", help="localisations to sweep")
    ] = "30,100,300,1000",
    nbetas: Annotated[
        str,
        typer.Option("--nbetas", help="inverse temperatures to sweep (';'-separated)"),
    ] = "n/log n",
    subset: Annotated[
        str | None, typer.Option("--subset", help="training subset of the loss")
    ] = None,
    chains: Annotated[int | None, _CHAINS] = None,
    draws: Annotated[int | None, _DRAWS] = None,
    burnin: Annotated[int | None, _BURNIN] = None,
    batch_size: Annotated[int | None, _BATCH] = None,
    seed: Annotated[int | None, _SEED] = None,
    device: Annotated[str, _DEVICE] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Sweep ε × γ (× nβ) on one checkpoint and recommend settings; plots the traces.

    Recommended: traces that flatten without early spikes or dips below L(w*). The recommendation is saved to DIR/analysis/llc/calibration.json, which `groklab llc DIR`
    then uses by default.
    """
    from rich.table import Table

    from groklab.analysis import llc
    from groklab.commands._common import console
    from groklab.report.figures import llc_calibration
    from groklab.report.static import save_figures
    from groklab.run import load_run

    try:
        run = load_run(run_dir)
        base, _ = _settings(
            run,
            {
                "chains": chains,
                "draws": draws,
                "burnin": burnin,
                "batch_size": batch_size,
                "seed": seed,
            },
            use_calibration=False,
        )
        nbs = [_nbeta(v) for v in nbetas.split(";") if v.strip()]
        eps, gam = _floats(epsilons, "--epsilons"), _floats(gammas, "--gammas")
        if step not in run.checkpoint_steps:
            run.weights_at(step)  # raises the one-line CheckpointError with the hint
        n_settings = len(eps) * len(gam) * len(nbs)
        console.print(
            f"[bold]calibrating[/] {run_dir} at step {step}: {n_settings} settings × "
            f"{base.chains} chains × {base.burnin}+{base.draws} steps",
            highlight=False,
        )
        from rich.progress import Progress

        with Progress(disable=quiet, transient=True) as bar:
            task = bar.add_task("settings", total=n_settings)
            cal = llc.calibrate(
                run,
                step,
                epsilons=eps,
                gammas=gam,
                nbetas=nbs,
                base=base,
                subset=subset,
                device=device,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        t = Table(title=f"LLC calibration at step {step} ({cal.subset})", title_justify="left")
        for col in ("ε", "γ", "nβ", "LLC", "± chains", "2nd/1st", "below L(w*)", "verdict"):
            t.add_column(col, justify="right")
        for i, r in enumerate(cal.results):
            verdict = "OK" if cal.ok[i] else ", ".join(cal.reasons[i])
            if i == cal.recommended:
                verdict = "[bold green]recommended[/]"
            t.add_row(
                f"{r.settings.epsilon:g}",
                f"{r.settings.gamma:g}",
                f"{r.nbeta:.4g}",
                _g(r.llc),
                _g(r.llc_std),
                _g(r.convergence_ratio, 3),
                f"{r.frac_below_init:.1%}" if _ok(r.frac_below_init) else "—",
                verdict,
            )
        console.print(t)
        (png,) = save_figures(
            {f"calibration-step{step}": llc_calibration(cal)}, run.path / llc.LLC_DIR
        )
        console.print(f"rule: {cal.rule}", highlight=False)
        if cal.recommendation is None:
            console.print(
                "[bold red]no setting passed[/]; widen the sweep (smaller ε, larger γ) or add "
                "burn-in"
            )
        else:
            r = cal.results[cal.recommended]
            console.print(
                f"[bold]recommended[/]: ε={r.settings.epsilon:g}, γ={r.settings.gamma:g}, "
                f"nβ={r.settings.nbeta} ({r.nbeta:.4g}) → LLC {r.llc:.4g} ± {r.llc_std:.2g}; "
                f"saved to {run.path / llc.LLC_DIR / llc.CALIBRATION_FILE}",
                highlight=False,
            )
        console.print(f"figure: {png}", highlight=False)
    except GroklabError as e:
        _fail(e)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="llc")
