"""The live progress bar of a training run."""

from __future__ import annotations


class _Progress:
    """Rich progress bar with the latest metrics; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, name: str) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=start, metrics="")

    def update(self, step: int, rows: list[dict[str, float]] | None = None) -> None:
        if not self.enabled:
            return
        if rows:
            mean = {
                k: sum(r[k] for r in rows) / len(rows)
                for k in ("train/loss", "train/acc", "test/loss", "test/acc")
            }
            m = (
                f"train {mean['train/loss']:.3g} ({mean['train/acc']:.1%})  "
                f"test {mean['test/loss']:.3g} ({mean['test/acc']:.1%})"
            )
            if len(rows) > 1:
                m = f"mean of {len(rows)}: " + m
            self.bar.update(self.task, completed=step, metrics=m)
        else:
            self.bar.update(self.task, completed=step)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
