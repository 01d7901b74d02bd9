"""Which key frequencies a progress analysis uses (its checkpoints:
:func:`groklab.run.select_steps`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from groklab.analysis import fourier as fr
from groklab.errors import ConfigError


def resolve_key_freqs(
    key_freqs: Sequence[int] | dict[str, Sequence[int]] | None,
    ops: Sequence[str],
    final_logits: dict[str, torch.Tensor],
    grids: dict[str, fr.OperationGrid],
    *,
    min_gap: float = fr.KEY_FREQ_MIN_GAP,
) -> dict[str, list[int]]:
    """Key frequencies per operation: given ones, or read off ``final_logits``."""
    out: dict[str, list[int]] = {}
    for op in ops:
        given = key_freqs.get(op) if isinstance(key_freqs, dict) else key_freqs
        if given is None:
            power = fr.logit_frequency_power(final_logits[op], grids[op])
            out[op] = fr.key_frequencies(power, min_gap=min_gap)
        else:
            bad = [k for k in given if not 1 <= int(k) <= grids[op].n // 2]
            if bad:
                raise ConfigError(
                    f"key frequency {bad[0]} is not allowed for {op}; allowed: 1..{grids[op].n // 2}"
                )
            out[op] = sorted({int(k) for k in given})
    return out
