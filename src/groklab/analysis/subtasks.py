"""Subtask learning order: when each subtask of a multitask run was learned.

For ``sparse-parity`` (:mod:`groklab.tasks.sparse_parity`): the largest phase change of every
subtask's test loss (:func:`groklab.analysis.phase_change.phase_change_table`), against the
subtask's frequency (the quanta of Michaud et al. 2023 are learned most frequent first).
"""

from __future__ import annotations

from groklab.analysis.phase_change import phase_change_table, spearman

__all__ = ["subtask_learning"]


def subtask_learning(run, **kwargs):
    """When each subtask of a sparse-parity run was learned, against its frequency.

    Args:
        run: a loaded sparse-parity :class:`~groklab.run.Run`.
        **kwargs: passed to :func:`groklab.analysis.phase_change.detect_phase_changes`.

    Returns:
        ``(table, rho)``: a DataFrame with one row per subtask (``subtask``, ``frequency``,
        ``onset``, ``midpoint``, ``end``; NaN steps for subtasks with no phase change) from
        the largest drop of ``test/task_i/loss``, and the Spearman correlation between the
        frequency rank (0 = most frequent) and the midpoint step over subtasks that were
        learned (positive = more frequent subtasks learned first).
    """
    info = run.task.info
    names = info["subset_names"]
    cols = [f"test/{n}/loss" for n in names]
    table = phase_change_table(run.metrics, cols, **kwargs)
    out = table[["onset", "midpoint", "end"]].reset_index(drop=True)
    out.insert(0, "frequency", info["frequencies"])
    out.insert(0, "subtask", range(len(names)))
    return out, spearman(out["subtask"], out["midpoint"])
