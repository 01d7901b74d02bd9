"""``groklab sweep``: run a family of runs from a spec, and report on it.

``groklab sweep SPEC`` is short for ``groklab sweep run SPEC``; ``groklab sweep status DIR``,
``groklab sweep figures DIR`` and ``groklab sweep studies`` are the other subcommands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from groklab.commands._common import EXIT_FAILED, console, err_console, print_error
from groklab.commands._common import fail as _fail

__all__ = ["register"]


class _RunByDefault(TyperGroup):
    """A group where an argument that is not a subcommand means ``run <that argument>``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _console() -> tuple[Any, Any]:
    return console, err_console


def _cell(v: Any, fmt: str = "{}") -> str:
    import pandas as pd

    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else fmt.format(v)


def _print_runs_table(status: Any, console: Any) -> None:
    from rich.table import Table

    t = Table(title="runs", title_justify="left")
    for c in ("run", "status", "step", "grokked at", "error"):
        t.add_column(c, overflow="fold")
    for _, r in status.iterrows():
        step = _cell(r["step"], "{:.0f}")
        if step and _cell(r["steps"]):
            step += _cell(r["steps"], "/{:.0f}")
        style = {"failed": "red", "completed": "green", "stopped": "yellow"}.get(r["status"], "")
        t.add_row(
            r["run"] + (" (bisect)" if r["source"] == "bisect" else ""),
            f"[{style}]{r['status']}[/]" if style else r["status"],
            step,
            _cell(r["grokking_step"], "{:.0f}"),
            _cell(r["error"])[:80],
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    sweep_app = typer.Typer(
        cls=_RunByDefault,
        no_args_is_help=True,
        help=(
            "Run a family of runs from a sweep spec (TOML file or shipped study name); "
            "`groklab sweep SPEC` = `groklab sweep run SPEC`."
        ),
    )

    @sweep_app.command("run")
    def run(
        spec: Annotated[str, typer.Argument(help="sweep spec TOML, or a study name")],
        workers: Annotated[
            int | None,
            typer.Option(
                "--workers",
                "-w",
                help="local: worker processes (default: all cores); ray: runs in flight "
                "(default: as the cluster schedules)",
            ),
        ] = None,
        backend: Annotated[str, typer.Option("--backend", help="local or ray")] = "local",
        address: Annotated[
            str | None, typer.Option("--address", help="Ray cluster address (ray backend)")
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="the sweep directory to write (default sweeps/<name>)"
            ),
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", help="override the base config: section.key=value"),
        ] = None,
        seeds: Annotated[
            str | None,
            typer.Option("--seeds", help="replace the spec's seeds, e.g. 0,1,2 or 0-7 or 0-3,10"),
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option("--option", help="analysis option, e.g. llc.every=400 or llc.chains=2"),
        ] = None,
        only: Annotated[
            list[str] | None,
            typer.Option("--only", help="train only runs whose name matches this glob"),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="list the runs, train nothing")
        ] = False,
        no_figures: Annotated[bool, typer.Option("--no-figures", help="skip figures")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
        threads: Annotated[
            int | None,
            typer.Option(
                "--threads",
                min=1,
                help="local: CPU threads of each run (default: all cores but one, shared "
                "out among the workers; OMP_NUM_THREADS if set); ray: threads and CPUs each "
                "run asks for (default: 1)",
            ),
        ] = None,
        device: Annotated[
            str | None,
            typer.Option(
                "--device",
                help="train.device of every run: auto, cpu, cuda or cuda:N (default: the "
                "spec's). Ray: checked on each worker, not here; auto = cuda if the cluster "
                "reports GPUs, else cpu",
            ),
        ] = None,
        gpus_per_run: Annotated[
            float | None,
            typer.Option(
                "--gpus-per-run",
                help="ray: the fraction of a GPU each CUDA run asks for (default: "
                "(0.5 GiB + 64 B x parameters) / 16 GiB, rounded up to a multiple of 1/16, "
                "within [1/16, 1])",
            ),
        ] = None,
        stack: Annotated[
            bool | None,
            typer.Option(
                "--stack/--no-stack",
                help="train the fresh runs that differ only in their seeds as one stack per "
                "job (equal to runs alone to float tolerance; default: the spec's stack key, "
                "else no)",
            ),
        ] = None,
    ) -> None:
        """Train every run of SPEC, skipping completed runs and resuming killed ones.

        A sweep directory holds one sweep: a re-launch may add runs (seeds, points), a spec
        that drops or changes a run already there is refused. Prints the summary at the end;
        exit code 1 when some run failed or diverged (a run with a damaged file counts as
        failed).
        """
        import contextlib

        from groklab.config import parse_seeds
        from groklab.errors import GroklabError, RunDamagedError
        from groklab.sweep import (
            _cores,
            expand,
            format_summary,
            load_spec,
            run_sweep,
            summary_columns,
        )

        console, err_console = _console()
        try:
            sets = list(set_ or ())
            if device is not None:  # validated with the config, before anything is created
                sets.append(f"train.device={device}")
            sp = load_spec(
                spec,
                sets=sets,
                seeds=parse_seeds(seeds) if seeds is not None else None,
                options=option or (),
            )
            if stack is not None:
                from dataclasses import replace

                sp = replace(sp, stack=stack)
            sweep_dir = out or Path("sweeps") / sp.name
            if dry_run:
                import fnmatch

                from groklab.sweep import _check_same_sweep, _read_sweep

                if (sweep_dir / "sweep.json").is_file():  # would the run be refused?
                    with contextlib.suppress(RunDamagedError):  # a damaged one is rewritten
                        _check_same_sweep(sweep_dir, _read_sweep(sweep_dir), expand(sp))

                runs = [
                    r
                    for r in expand(sp)
                    if not only or any(fnmatch.fnmatchcase(r.name, pat) for pat in only)
                ]
                for r in runs:
                    console.print(f"{sweep_dir / r.name}", highlight=False)
                console.print(f"{len(runs)} runs", highlight=False)
                return
            n_workers = workers if workers is not None else (_cores() if backend == "local" else 0)
            if backend == "local" and n_workers <= 1 and threads is None:
                from groklab.train.threads import default_threads

                threads = default_threads()  # runs in this process: the train command's policy
            res = run_sweep(
                sp,
                sweep_dir,
                workers=n_workers,
                backend=backend,
                address=address,
                progress=not quiet,
                only=only or (),
                console=console,
                threads=threads,
                gpus_per_run=gpus_per_run,
            )
        except GroklabError as e:
            _fail(e)
            return
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command again to resume the sweep")
            raise typer.Exit(130) from None
        if len(res.points):
            console.print(
                format_summary(
                    res.points,
                    title=f"{sp.name}  ({sweep_dir})",
                    extra=summary_columns(sp.study),
                )
            )
        if res.bisect is not None:
            b = res.bisect
            msg = b.get("note") or (
                f"critical {b['key']} between {b['lo']} (does not generalise) and {b['hi']} "
                f"(generalises): about {b['estimate']}"
            )
            console.print(f"bisection: {msg}", highlight=False)
        for r in res.results:
            if r["status"] == "diverged":
                print_error(f"{r['out']}", prefix="diverged: ", style="yellow")
            elif r["status"] != "completed":
                print_error(f"{r['out']}: {r['error']}", prefix="failed: ")
        if not no_figures and sp.study:
            from groklab.report.static import draw_study_figures

            try:  # the runs are done and summarised: a figure failure does not undo that
                for f in draw_study_figures(sweep_dir):
                    console.print(f"figure: {f}", highlight=False)
            except GroklabError as e:
                err_console.print(f"figures skipped: {e}", highlight=False, markup=False)
        console.print(
            f"summary: {sweep_dir / 'summary.parquet'} (per run), "
            f"{sweep_dir / 'points.parquet'} (per point)",
            highlight=False,
        )
        if res.n_failed or any(r["status"] == "diverged" for r in res.results):
            raise typer.Exit(EXIT_FAILED)  # a run failed or diverged

    @sweep_app.command("status")
    def status(
        sweep_dir: Annotated[Path, typer.Argument(help="a sweep directory")],
    ) -> None:
        """Each run's state and the summary of the finished runs.

        States: pending, running, stopped (killed: re-launch to resume), completed,
        diverged, failed.
        """
        import json

        from groklab.errors import GroklabError
        from groklab.sweep import (
            _read_sweep,
            format_summary,
            summarize_sweep,
            summary_columns,
            sweep_status,
        )

        console, _ = _console()
        try:
            st = sweep_status(sweep_dir)
            _print_runs_table(st, console)
            counts = st["status"].value_counts().to_dict() if len(st) else {}
            console.print(
                "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no runs",
                highlight=False,
            )
            _, points = summarize_sweep(sweep_dir, write=False)
            if len(points) and points["n"].sum() > 0:
                study = _read_sweep(sweep_dir).get("study")
                console.print(
                    format_summary(
                        points, title=f"summary ({sweep_dir})", extra=summary_columns(study)
                    )
                )
            bp = Path(sweep_dir) / "bisect.json"
            if bp.exists():
                b = json.loads(bp.read_text())
                console.print(
                    f"bisection on {b['key']}: lo={b.get('lo')} hi={b.get('hi')} "
                    f"estimate={b.get('estimate')} {b.get('note') or ''}",
                    highlight=False,
                )
        except GroklabError as e:
            _fail(e)

    @sweep_app.command("figures")
    def figures(
        sweep_dir: Annotated[Path, typer.Argument(help="a sweep directory")],
    ) -> None:
        """(Re)draw the study figures of a sweep into DIR/figures/."""
        from groklab.errors import GroklabError
        from groklab.report.static import draw_study_figures

        console, _ = _console()
        try:
            paths = draw_study_figures(sweep_dir)
        except GroklabError as e:
            _fail(e)
            return
        for p in paths:
            console.print(f"figure: {p}", highlight=False)
        if not paths:
            console.print("no study figures for this sweep", highlight=False)

    @sweep_app.command("studies")
    def studies() -> None:
        """The shipped study specs (run one with `groklab sweep NAME`)."""
        from rich.table import Table

        from groklab.sweep import expand, list_studies, load_spec

        console, _ = _console()
        t = Table("study", "runs", "description")
        for name in list_studies():
            sp = load_spec(name)
            t.add_row(name, str(len(expand(sp))), sp.description)
        console.print(t)

    app.add_typer(sweep_app, name="sweep")
