"""``groklab analyze`` (reverse-engineer a run) and ``groklab import`` (published checkpoints)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _ints(text: str | None, what: str) -> list[int] | None:
    from groklab.errors import ConfigError

    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise ConfigError(f"{what}={text!r} is not allowed; give integers like 14,35,41") from None


def _fmt_loss(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _step_or_never(step: int | None) -> str:
    """A step, or "never" when there is none (step 0 is a step)."""
    return "never" if step is None else str(step)


def _span(span: Any) -> str:
    if span is None:
        return "not reached"
    a, b = span
    return f"{a} – {'end' if b is None else b}"


def _power_row(snap: Any, keys: list[int]) -> str:
    """The strongest frequencies' logit power, strongest first: ``14*: 7.1e+08, ...``."""
    power = snap.logit_power
    order = sorted(range(1, len(power)), key=lambda k: -power[k])
    shown = order[: max(6, len(keys) + 3)]
    return ", ".join(f"{k}{'*' if k in keys else ''}: {power[k]:.2g}" for k in shown)


def _print_summary(run: Any, result: Any, figures: list[Path], console: Any) -> None:
    from rich.table import Table

    prog, ph = result.progress, result.phases
    last = prog.table.sort_values("step").iloc[-1]
    t = Table(
        title=f"analysis of {run.path}  (seed {run.config.train.seed})",
        show_header=False,
        title_justify="left",
    )
    t.add_column(style="bold")
    t.add_column()
    how = "from cache" if result.cached else f"computed in {prog.seconds:.1f} s"
    t.add_row("checkpoints analysed", f"{len(prog.steps)} ({how})")
    for op, snap in result.snapshots.items():
        log = f" (discrete log, generator {snap.generator})" if snap.generator is not None else ""
        t.add_row(f"{op}: key frequencies{log}", ", ".join(map(str, prog.key_freqs[op])) or "none")
        t.add_row(f"{op}: logit power, strongest (* key)", _power_row(snap, prog.key_freqs[op]))
        if snap.clustered_share is not None:
            counts = ", ".join(f"{k}: {v}" for k, v in snap.cluster_counts().items())
            t.add_row(
                f"{op}: clustered neurons",
                f"{snap.clustered_share:.1%} (share ≥ {snap.cluster_threshold}; {counts})",
            )
        t.add_row(f"{op}: logit fit variance explained", f"{snap.fit_fve:.1%}")
        gl = "n/a" if snap.gini_W_L is None else f"{snap.gini_W_L:.3f}"
        t.add_row(f"{op}: Gini of Fourier norms W_E / W_L", f"{snap.gini_W_E:.3f} / {gl}")
        t.add_row(
            f"{op}: final train / test / restricted / excluded loss",
            " / ".join(
                _fmt_loss(last.get(f"{op}/{c}"))
                for c in ("train_loss", "test_loss", "restricted_loss", "excluded_loss")
            ),
        )
        ratio_f = ph.excluded_ratio_at_formation.get(op)
        ratio_g = ph.excluded_ratio_before_grokking.get(op)
        t.add_row(
            f"{op}: excluded / train loss at formation start, before grokking",
            f"{_fmt_loss(ratio_f)}, {_fmt_loss(ratio_g)}",
        )
    t.add_row("memorisation", _span(ph.memorisation))
    t.add_row("circuit formation", _span(ph.circuit_formation))
    t.add_row("cleanup", _span(ph.cleanup))
    t.add_row("grokking step (test acc ≥ 99%)", _step_or_never(ph.grokking_step))
    if len(ph.grokking_step_by_op) > 1:
        for op, s in ph.grokking_step_by_op.items():
            t.add_row(f"  {op}", _step_or_never(s))
    if figures:
        t.add_row("figures", str(figures[0].parent))
    console.print(t)


def analyze(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    every: Annotated[
        int,
        typer.Option(
            "--every",
            "-e",
            help="the checkpoints at multiples of N steps, plus the first and last (default: all)",
        ),
    ] = 1,
    key_freqs: Annotated[
        str | None,
        typer.Option(
            "--key-freqs",
            "-k",
            help="this run's own key frequencies to use, e.g. 14,35 (default: its final checkpoint's)",
        ),
    ] = None,
    op: Annotated[
        list[str] | None, typer.Option("--op", help="operation(s) to analyse (default: all)")
    ] = None,
    generator: Annotated[
        int | None, typer.Option("--generator", help="generator of Z_p* for mul/div")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even if cached")] = False,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="write PNG figures")
    ] = True,
) -> None:
    """Reverse-engineer a run: Fourier circuit, progress measures over checkpoints, phases.

    Results are cached in DIR/analysis/ (recomputed only when missing or stale); figures are
    written to DIR/figures/.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from groklab.analysis.progress import analyze_run
    from groklab.commands._common import fail as _fail
    from groklab.errors import GroklabError
    from groklab.run import load_run

    console = Console()
    try:
        run = load_run(run_dir)
        if run.status == "running":
            console.print(f"{run_dir}: still training; analysing the checkpoints saved so far")
        ops = list(op) if op else None
        gens = None
        if generator is not None:
            gens = {o: generator for o in (ops or run.task.info.get("operations", []))}
        with Progress(
            TextColumn("analysing checkpoints"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task_id = bar.add_task("analyse", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task_id, completed=done, total=total)

            result = analyze_run(
                run,
                every=every,
                key_freqs=_ints(key_freqs, "--key-freqs"),
                ops=ops,
                generators=gens,
                force=force,
                callback=tick,
            )
        written: list[Path] = []
        if figures:
            from groklab.report.static import analysis_figures, save_figures

            figs = analysis_figures(result.snapshots, result.progress.table, result.phases)
            written = save_figures(figs, Path(run_dir) / "figures")
        _print_summary(run, result, written, console)
    except GroklabError as e:
        _fail(e)


def import_(
    src: Annotated[
        Path, typer.Argument(help="a published checkpoint (.pth/.pt) or a folder of them")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the run directory to write")],
    operation: Annotated[
        str, typer.Option("--operation", help="the operation the model was trained on")
    ] = "add",
    train_fraction: Annotated[
        float | None,
        typer.Option("--train-fraction", help="training share (default: from the file, else 0.3)"),
    ] = None,
    published_split_seed: Annotated[
        int | None,
        typer.Option(
            "--published-split-seed",
            help="rebuild the published code's split (random.seed(SEED); random.shuffle(pairs))",
        ),
    ] = None,
    act: Annotated[str, typer.Option("--act", help="MLP activation: relu or gelu")] = "relu",
) -> None:
    """Import a published progress-measures or TransformerLens checkpoint as a groklab run.

    Reads SRC with torch.load(weights_only=True) only, infers the config from the shapes,
    keeps the loss history as metrics; then run `groklab analyze OUT`.
    """
    from rich.console import Console

    from groklab.analysis.importer import import_checkpoint
    from groklab.commands._common import fail as _fail
    from groklab.errors import GroklabError

    try:
        res = import_checkpoint(
            src,
            out,
            operation=operation,
            train_fraction=train_fraction,
            published_split_seed=published_split_seed,
            act=act,
        )
    except GroklabError as e:
        _fail(e)
        return
    c = Console()
    c.print(
        f"imported {res.source_format} checkpoint(s) from {src} → {out}: {len(res.steps)} "
        f"checkpoint(s) (steps {res.steps[0]}..{res.steps[-1]}), p={res.config.data.p}, "
        f"d_model={res.config.model.d_model}, {res.config.model.n_heads} heads, "
        f"d_mlp={res.config.model.d_mlp}; loss history rows: {res.n_metrics}"
    )
    for note in res.notes:
        c.print(f"note: {note}")
    c.print(f"next: groklab analyze {out}")


def register(app: typer.Typer) -> None:
    """Add ``analyze`` and ``import`` to the CLI."""
    app.command("analyze")(analyze)
    app.command("import")(import_)
