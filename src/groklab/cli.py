"""The ``groklab`` command line (typer).

Bad input (a :class:`~groklab.errors.GroklabError`) is answered with one line on stderr and exit
code 2; nothing on disk is touched. Exit codes: 0 completed, 1 a run failed or diverged, 2 bad
input, 130 interrupted (see :mod:`groklab.commands._common`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from groklab.commands._common import (
    EXIT_FAILED,
    GroklabGroup,
    console,
    fail,
    interrupted,
    print_error,
)
from groklab.errors import GroklabError

app = typer.Typer(
    cls=GroklabGroup,
    name="groklab",
    help="A laboratory for grokking: train, watch and take apart small networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fmt(v: object) -> str:
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_summary(run_path: Path, *, report: bool = False) -> None:
    """Print a run's summary table; with ``report``, also write its report and print its path."""
    from groklab.run import load_run

    run = load_run(run_path)
    s = run.summary()
    m = run.manifest
    t = Table(title=f"{run.config.name}  ({run_path})", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("status", str(m.get("status")))
    t.add_row("steps", _fmt(s.get("final_step")))
    t.add_row("memorised (train acc ≥ 99%) at step", _fmt(s.get("memorisation_step")))
    t.add_row("grokked (test acc ≥ 99%) at step", _fmt(s.get("grokking_step")))
    for name, step in (s.get("grokking_step_by_subset") or {}).items():
        t.add_row(f"  {name} ≥ 99% at step", _fmt(step))
    for k, v in s.get("final", {}).items():
        t.add_row(f"final {k}", f"{v:.4%}" if k.endswith("/acc") else f"{v:.4g}")
    if m.get("wall_seconds") is not None:
        sps = m.get("seconds_per_step")
        t.add_row(
            "wall time",
            f"{m['wall_seconds']:.1f} s"
            + (f"  ({sps * 1000:.1f} ms/step on {m.get('device')})" if sps else ""),
        )
    t.add_row("split hash / seed", f"{m.get('split_hash')} / {m.get('seed')}")
    console.print(t)
    if report:
        from groklab.commands.report import write_and_print

        write_and_print(run_path)


def _finish(paths: list[Path], *, report: bool) -> None:
    """Print each run's summary; exit code 1 when one of them diverged or failed."""
    from groklab.store import read_manifest

    bad = []
    for p in paths:
        _print_summary(p, report=report)
        m = read_manifest(p)
        if m.get("status") == "diverged":
            bad.append(
                f"{p}: diverged at step {m.get('final_step', '?')} (train loss NaN/inf or above "
                "train.diverge_loss); its last good checkpoint is kept"
            )
        elif m.get("status") == "failed":
            bad.append(f"{p}: failed ({m.get('error') or 'no error recorded'})")
    if bad:
        print_error("; ".join(bad))
        raise typer.Exit(EXIT_FAILED)


@app.command()
def train(
    preset: Annotated[
        Optional[str], typer.Option("--preset", "-p", help="start from a named preset")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="start from a config TOML file")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", "-s", help="override a field: section.key=value (repeatable)"),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="the run directory to write (default runs/<name>); with --seeds, OUT/seedN",
        ),
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option("--resume", help="continue the run in this directory")
    ] = None,
    from_checkpoint: Annotated[
        Optional[str],
        typer.Option(
            "--from-checkpoint",
            help="start from run DIR's weights at STEP (DIR@STEP) with DIR's config; "
            "--set data.train_size=N trains on N of DIR's own training rows (ungrokking)",
        ),
    ] = None,
    device: Annotated[
        Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    report: Annotated[
        bool,
        typer.Option("--report", help="write DIR/report.html (and figures/) at the end"),
    ] = False,
    seeds: Annotated[
        Optional[str],
        typer.Option(
            "--seeds",
            help="train one run per seed (train.seed) as one batched computation, e.g. "
            "0,1,2,3 or 0-7 or 0-3,10; run N goes to OUT/seedN",
        ),
    ] = None,
    split_seeds: Annotated[
        Optional[str],
        typer.Option("--split-seeds", help="with --seeds: data.split_seed of each run, e.g. 0-7"),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for torch (default: all cores but one, or OMP_NUM_THREADS; "
            "more threads than free cores slows training many times over)",
        ),
    ] = None,
) -> None:
    """Train a model (a preset, a config file, or defaults = the nanda2023 run)."""
    import torch

    from groklab.config import apply_overrides, load_config
    from groklab.presets import get_preset
    from groklab.run import load_run
    from groklab.train.loop import run_training
    from groklab.train.threads import default_threads

    torch.set_num_threads(threads or default_threads())
    targets: list[Path] = []  # the run directories being written, for the Ctrl-C hint
    try:
        if resume is not None:
            if preset or config or set_ or out or from_checkpoint:
                fail(
                    "--resume takes the run's own config; "
                    "drop --preset/--config/--set/--out/--from-checkpoint"
                )
            run = load_run(resume, for_resume=True)
            if run.status == "completed":
                from groklab.train.loop import rebuild_final_checkpoint

                rebuilt = rebuild_final_checkpoint(resume)
                if rebuilt is not None:
                    console.print(f"{rebuilt}: rebuilt from the run's saved state", markup=False)
                else:
                    console.print(f"{resume}: already completed; nothing to do", markup=False)
                _finish([resume], report=report)
                return
            targets = [resume]
            run_training(run.config, resume, resume=True, progress=not quiet)
            _finish(targets, report=report)
            return
        if from_checkpoint is not None:
            from groklab.dcrit import continue_config

            if preset or config:
                fail("--from-checkpoint takes the parent run's config; drop --preset/--config")
            ovs = list(set_ or []) + ([f"train.device={device}"] if device else [])
            cfg = continue_config(from_checkpoint, ovs)
            targets = [out or Path("runs") / cfg.name]
            run_training(cfg, targets[0], progress=not quiet)
            _finish(targets, report=report)
            return
        if preset and config:
            fail("give --preset or --config, not both")
        cfg = (
            get_preset(preset)
            if preset
            else load_config(config)
            if config
            else get_preset("nanda2023")
        )
        overrides = list(set_ or [])
        if device:
            overrides.append(f"train.device={device}")
        cfg = apply_overrides(cfg, overrides)
        path = out or Path("runs") / cfg.name
        if seeds is not None or split_seeds is not None:
            from groklab.config import parse_seeds
            from groklab.train.ensemble import seed_configs, train_many

            if seeds is None:
                fail("--split-seeds needs --seeds (one train seed per split seed)")
            seed_list = parse_seeds(seeds)
            splits = (
                parse_seeds(split_seeds, flag="--split-seeds") if split_seeds is not None else None
            )
            cfgs = seed_configs(cfg, seed_list, split_seeds=splits)
            targets = [path / f"seed{s}" for s in seed_list]
            train_many(cfgs, targets, progress=not quiet)
            _finish(targets, report=report)
            return
        targets = [path]
        run_training(cfg, path, progress=not quiet)
        _finish(targets, report=report)
    except GroklabError as e:
        fail(e)
    except KeyboardInterrupt:
        where = " ".join(str(t) for t in targets) or "DIR"
        interrupted(f"continue with `groklab train --resume {where}`")


@app.command()
def presets() -> None:
    """List the presets with a one-line description each."""
    from groklab.presets import PRESETS

    t = Table("preset", "description")
    for p in PRESETS.values():
        t.add_row(p.name, p.description)
    console.print(t)


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Config, status, memorisation and grokking steps, and final metrics of a run."""
    from groklab.config import save_config
    from groklab.run import load_run

    try:
        run = load_run(run_dir)
        console.print(f"[bold]config[/] ({run_dir / 'config.toml'})")
        console.print(save_config(run.config), highlight=False, markup=False)
        _print_summary(run_dir)
        from groklab.commands.zoo import print_phase_changes

        print_phase_changes(run, console)
    except GroklabError as e:
        fail(e)


from groklab.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
