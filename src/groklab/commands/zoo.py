"""``groklab dcrit`` (critical data size search) and ``groklab ungrok`` (continue a grokked
checkpoint on smaller training sets), plus the phase-change table of ``groklab show``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["print_phase_changes", "register"]


def _fmt_step(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:,.0f}"


def print_phase_changes(run: Any, console: Any) -> None:
    """Print the largest phase change of every loss column of ``run`` (a rich table)."""
    from rich.table import Table

    from groklab.analysis.phase_change import phase_change_table

    m = run.metrics
    if m.empty or "step" not in m:
        return
    table = phase_change_table(m)
    if table.empty:
        return
    t = Table(
        "loss",
        "onset",
        "midpoint",
        "end",
        "plateau → final",
        title="phase changes (largest drop per loss curve; onset/mid/end = 10/50/90% of the "
        "drop, rule in groklab.analysis.phase_change)",
        title_justify="left",
    )
    for col, r in table.iterrows():
        found = r["n_drops"] > 0
        t.add_row(
            str(col),
            _fmt_step(r["onset"]),
            _fmt_step(r["midpoint"]),
            _fmt_step(r["end"]),
            f"{r['plateau']:.3g} → {r['final']:.3g}" if found else "no phase change",
        )
    console.print(t)
    for line in _task_lines(run):
        console.print(line, highlight=False, markup=False)


def _task_lines(run: Any) -> list[str]:
    """Task-specific figures of the zoo tasks: induction heads of ``repeat-subseq`` at the last
    checkpoint, the frequency/learning-step rank correlation of ``sparse-parity``."""
    name = run.task.name
    if name == "repeat-subseq" and run.checkpoint_steps:
        from groklab.analysis.induction import induction_scores

        step = run.checkpoint_steps[-1]
        s = induction_scores(run.model_at(step), run.task)
        lines = []
        for key, what in (
            ("induction", "induction score (attention to the token after the previous occurrence)"),
            ("prev_token", "previous-token score"),
        ):
            v = s[key]
            i = int(v.argmax())
            layer, head = divmod(i, v.shape[1])
            lines.append(
                f"best {what} at step {step:,}: {float(v.flatten()[i]):.3f} "
                f"(layer {layer}, head {head})"
            )
        return lines
    if name == "sparse-parity":
        import numpy as np

        from groklab.analysis.subtasks import subtask_learning

        table, rho = subtask_learning(run)
        learned = int(np.isfinite(table["midpoint"]).sum())
        return [
            f"subtasks with a phase change: {learned} of {len(table)}; Spearman(frequency rank, "
            f"learning step) = {rho:.3f} (positive: more frequent subtasks learned first)"
        ]
    return []


def _seed_list(text: str, command: str) -> list[int]:
    """``--seeds`` of ``dcrit`` and ``ungrok``: a seed list like every command's
    (:func:`groklab.config.parse_seeds`).

    A bare positive integer ``N`` once meant N seeds (0..N-1) here; taken as the one seed N
    it would silently run other seeds, so it is refused with both new spellings. ``0`` is
    seed 0 (as a count it never ran anything).
    """
    from groklab.config import parse_seeds
    from groklab.errors import ConfigError

    t = text.strip()
    if t.isdigit() and int(t) > 0:
        n = int(t)
        seeds = "seed" if n == 1 else "seeds"
        raise ConfigError(
            f"{command} --seeds {t!r} is not allowed; --seeds is a list of seeds, not a count: "
            f"for {n} {seeds} give --seeds 0-{n - 1}, for seed {n} alone --seeds {n}-{n}"
        )
    return parse_seeds(t)


def register(app: typer.Typer) -> None:
    """Add ``dcrit`` and ``ungrok`` to the CLI."""

    @app.command()
    def dcrit(
        lo: Annotated[int, typer.Option("--lo", help="smallest training-set size")],
        hi: Annotated[int, typer.Option("--hi", help="largest training-set size")],
        preset: Annotated[
            str | None, typer.Option("--preset", "-p", help="base preset (default nanda2023)")
        ] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="base config TOML file")
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", help="override a base field: section.key=value"),
        ] = None,
        seeds: Annotated[
            str,
            typer.Option(
                "--seeds",
                help="the seeds of every size (values of --seed-key), e.g. 0-2 or 0,1,2",
            ),
        ] = "0-2",
        steps: Annotated[
            str | None,
            typer.Option(
                "--steps",
                hidden=True,
                help="refused: the step budget is --set train.steps=N",
            ),
        ] = None,
        threshold: Annotated[
            float,
            typer.Option("--threshold", help="final test accuracy that counts as generalising"),
        ] = 0.95,
        tol: Annotated[float, typer.Option("--tol", help="stop when hi/lo <= 1 + tol")] = 0.1,
        max_rounds: Annotated[int, typer.Option("--max-rounds", help="bisection rounds")] = 10,
        points: Annotated[
            int, typer.Option("--points-per-round", help="sizes tried per round")
        ] = 1,
        workers: Annotated[
            int,
            typer.Option("--workers", "-w", help="jobs at a time (the seeds of one size: one job)"),
        ] = 1,
        from_checkpoint: Annotated[
            str | None,
            typer.Option(
                "--from-checkpoint",
                help="search over subsets of this grokked checkpoint's own training data "
                "(DIR@STEP): the ungrokking boundary; runs shared with `groklab ungrok`",
            ),
        ] = None,
        size_key: Annotated[
            str | None,
            typer.Option(
                "--size-key",
                help="the field that sets the size (data.train_size; data.train_subset with "
                "--from-checkpoint)",
            ),
        ] = None,
        seed_key: Annotated[
            str | None,
            typer.Option(
                "--seed-key",
                help="the field the seeds set (train.seed; data.subset_seed with "
                "--from-checkpoint)",
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="the search directory to write (default sweeps/dcrit-<name>, with "
                "--from-checkpoint sweeps/ungrok-<run>-<step>)",
            ),
        ] = None,
    ) -> None:
        """Critical data size: bisect (log scale) the training-set size between runs that
        only memorise and runs that generalise within the step budget, several seeds per size.
        Re-running the same command continues a killed search."""
        from groklab.commands._common import console
        from groklab.commands._common import fail as _fail
        from groklab.config import apply_overrides, load_config
        from groklab.dcrit import continue_config, find_dcrit, parse_checkpoint_ref
        from groklab.errors import GroklabError
        from groklab.presets import get_preset

        try:
            if steps is not None:  # --steps of every other command lists checkpoint steps
                _fail(
                    f"dcrit --steps {steps} is not allowed; the step budget per run is a config "
                    f"field: give --set train.steps={steps}"
                )
            seed_list = _seed_list(seeds, "dcrit")
            ovs = list(set_ or [])
            if from_checkpoint is not None:
                if preset or config:
                    _fail("--from-checkpoint takes the checkpoint's config; drop --preset/--config")
                base = continue_config(from_checkpoint, ovs)
                run_dir, step = parse_checkpoint_ref(from_checkpoint)
                folder = out or Path("sweeps") / f"ungrok-{run_dir.name}-{step}"
                size_key = size_key or "data.train_subset"
                seed_key = seed_key or "data.subset_seed"
            else:
                if preset and config:
                    _fail("give --preset or --config, not both")
                base = load_config(config) if config else get_preset(preset or "nanda2023")
                base = apply_overrides(base, ovs)
                folder = out or Path("sweeps") / f"dcrit-{base.name}"

            def report(res: Any) -> None:
                p = res.points
                last = ", ".join(f"{q.size}: {sum(q.generalised)}/{len(q.generalised)}" for q in p)
                console.print(f"sizes tried (generalised/seeds): {last}", highlight=False)

            res = find_dcrit(
                base,
                folder,
                lo=lo,
                hi=hi,
                seeds=seed_list,
                threshold=threshold,
                rel_tol=tol,
                max_rounds=max_rounds,
                points_per_round=points,
                workers=workers,
                size_key=size_key or "data.train_size",
                seed_key=seed_key or "train.seed",
                on_round=report,
            )
        except GroklabError as e:
            _fail(e)
            return
        console.print(res.table().to_string(index=False), highlight=False, markup=False)
        budget = f"budget {res.steps} steps, {len(res.seeds)} seeds, threshold {threshold:.0%}"
        if res.estimate is not None:
            console.print(
                f"[bold]D_crit ≈ {res.estimate:.0f}[/] ({res.lo} memorise < D_crit <= "
                f"{res.hi} generalise; {budget}); results in {folder / 'dcrit.json'}"
            )
        elif res.lo is None:
            console.print(f"even {res.hi} generalised: D_crit <= {res.hi} ({budget}); lower --lo")
        else:
            console.print(
                f"even {res.lo} did not generalise: D_crit > {res.lo} ({budget}); raise --hi"
            )

    @app.command()
    def ungrok(
        checkpoint: Annotated[str, typer.Argument(help="a grokked checkpoint, DIR@STEP")],
        sizes: Annotated[
            str, typer.Option("--sizes", help="training subset sizes, comma separated")
        ],
        seeds: Annotated[
            str,
            typer.Option(
                "--seeds",
                help="the subset draws of every size (data.subset_seed), e.g. 0 or 0-2",
            ),
        ] = "0",
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", help="override: section.key=value (e.g. train.steps=5000)"),
        ] = None,
        workers: Annotated[
            int,
            typer.Option("--workers", "-w", help="jobs at a time (the seeds of one size: one job)"),
        ] = 1,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="the directory to write (default sweeps/ungrok-<run>-<step>)",
            ),
        ] = None,
    ) -> None:
        """Ungrokking / semi-grokking: continue a grokked checkpoint on random subsets of its
        own training data of each size; final test accuracy versus size."""
        from groklab.commands._common import console
        from groklab.commands._common import fail as _fail
        from groklab.dcrit import parse_checkpoint_ref, ungrok_curve
        from groklab.errors import GroklabError

        try:
            try:
                size_list = [int(s) for s in sizes.split(",") if s.strip()]
            except ValueError:
                _fail(f"--sizes {sizes!r} is not a comma-separated list of integers")
                return
            seed_list = _seed_list(seeds, "ungrok")
            run_dir, step = parse_checkpoint_ref(checkpoint)
            folder = out or Path("sweeps") / f"ungrok-{run_dir.name}-{step}"
            table = ungrok_curve(
                checkpoint,
                size_list,
                folder,
                seeds=seed_list,
                overrides=list(set_ or []),
                workers=workers,
            )
        except GroklabError as e:
            _fail(e)
            return
        summary = table.groupby("size")[["test_acc", "train_acc"]].agg(["mean", "min", "max"])
        console.print(summary.to_string(), highlight=False, markup=False)
        console.print(f"per-run table: {folder / 'ungrok.csv'}")
