"""Progress measures over every checkpoint of a run, and the circuit at one checkpoint.

:func:`progress_measures` walks the checkpoints of a saved run and, for each operation of the
task, records (Nanda et al. 2023, §5):

* ``{op}/train_loss``, ``{op}/train_acc``, ``{op}/test_loss``, ``{op}/test_acc`` — on that
  operation's grid rows of each split;
* ``{op}/restricted_loss`` (test rows) and ``{op}/restricted_train_loss`` — the logits
  projected onto the constant (the mean correction) and the ``cos(w_k s), sin(w_k s)``
  directions of the key frequencies only, i.e. the generalising circuit alone;
* ``{op}/excluded_loss`` (train rows) — the logits with exactly those directions removed —
  and ``{op}/excluded_loss/k{f}`` with only frequency ``f``'s two directions removed;
* ``{op}/logit_fve`` — the variance of the logits explained by ``Σ_k A_k cos(w_k(s − c))``;
* ``{op}/gini_W_E``, ``{op}/gini_W_L`` — Gini coefficient of the Fourier norms per frequency
  of the embedding and of the neuron-logit map (sparsity);
* ``{op}/key_freqs`` — the key frequencies read off that checkpoint alone (space-separated;
  empty when no sparse set stands out);
* ``sumsq/<param>`` and ``sumsq/total`` — the sum of squared weights.

``s`` is the answer index (``a + b`` for addition; see :mod:`groklab.analysis.fourier`). The
restricted/excluded/logit-fit measures use one key-frequency set per operation, by default the
one read off the run's final checkpoint. All losses here are cross-entropies over the ``n``
answer classes (the residues, or the non-zero residues for mul/div), as in the published
analysis; they differ from ``metrics.parquet`` only by the probability a model puts on the
``=``/operation tokens, which a trained model makes negligible.

Speed: one forward pass over the whole operand grid per checkpoint (all operations at once);
every measure is then a function of those logits, and every projection onto functions of the
answer index needs only an ``n × n`` summary of the logits (:func:`~groklab.analysis.fourier.
sum_profile`).
"""

from __future__ import annotations

from groklab.analysis.progress.cache import ANALYSIS_VERSION, Analysis, analyze_run
from groklab.analysis.progress.logits import (
    excluded_logits,
    excluded_loss,
    grid_logits,
    neuron_hook_name,
    restricted_logits,
    restricted_loss,
    split_metrics,
)
from groklab.analysis.progress.measures import Progress, progress_measures
from groklab.analysis.progress.selection import resolve_key_freqs
from groklab.analysis.progress.snapshot import Snapshot, circuit_snapshot

__all__ = [
    "ANALYSIS_VERSION",
    "Analysis",
    "Progress",
    "Snapshot",
    "analyze_run",
    "circuit_snapshot",
    "excluded_logits",
    "excluded_loss",
    "grid_logits",
    "neuron_hook_name",
    "progress_measures",
    "resolve_key_freqs",
    "restricted_logits",
    "restricted_loss",
    "split_metrics",
]
