"""Landmarks of an LLC curve over training: its peak and where it levels off.

:func:`landmarks` reads the rows of
:func:`~groklab.analysis.llc.cache.llc_over_checkpoints` (``step``, ``llc``) and returns the
step and value of the peak, the final level (median of the last tenth of the steps) and the
first step after the peak from which the curve stays within a band around that level,
measured on a log scale when the estimates allow it (the LLC falls by orders of magnitude
through grokking) and linearly otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from groklab.errors import ConfigError


def landmarks(df: pd.DataFrame, *, tol: float = 0.1, scale: str = "auto") -> dict[str, Any]:
    """Peak and levelling-off of an LLC curve (rows with ``step`` and ``llc``).

    The peak is the step of the largest estimate. The final level is the median of the last
    10% of the steps (at least 3). The curve has levelled off at the first step after the
    peak from which every later estimate stays within ``tol`` of the drop (peak − final
    level) of the final level.

    ``scale`` says where the drop is measured: ``"linear"`` in LLC units, ``"log"`` in
    log(LLC), ``"auto"`` (default) log when the peak and every estimate after it are positive,
    else linear. Through grokking the LLC at a fixed γ falls by orders of magnitude (628 → 0.24
    on the canonical run at γ = 1,000), so 10% of the linear drop is still 250× the final level;
    on the log scale the band is a factor of the same share of the whole fall (``tol`` 0.1 of a
    2,600× fall is a factor of 2.2). How large that fall is depends on γ: after grokking the
    estimates are γ-sensitive (see :class:`GammaCheck`): the level is γ's, not the
    landscape's. Returns the scale used as ``level_scale``.
    """
    if scale not in ("auto", "log", "linear"):
        raise ConfigError(f"landmarks: scale={scale!r} is not allowed; use auto, log or linear")
    d = df.dropna(subset=["llc"]).sort_values("step")
    if d.empty:
        return {
            "peak_step": None,
            "peak_llc": None,
            "level_step": None,
            "final_llc": None,
            "level_scale": None,
        }
    steps = d["step"].to_numpy()
    v = d["llc"].to_numpy(dtype=float)
    i_peak = int(np.argmax(v))
    k = max(3, len(v) // 10)
    final = float(np.median(v[-k:]))
    positive = bool((v[i_peak:] > 0).all()) and final > 0
    if scale == "log" and not positive:
        raise ConfigError("landmarks: scale='log' needs positive estimates from the peak on")
    use_log = scale == "log" or (scale == "auto" and positive)
    if use_log:  # estimates before the peak may be <= 0; they are never in the band
        fv, ffinal = np.log(np.where(v > 0, v, np.nan)), math.log(final)
    else:
        fv, ffinal = v, final
    drop = fv[i_peak] - ffinal
    level_step = None
    if drop > 0:
        within = np.abs(fv - ffinal) <= tol * drop
        # first index after the peak from which all later points are within the band
        ok_from = len(v)
        for i in range(len(v) - 1, i_peak, -1):
            if not within[i]:
                break
            ok_from = i
        if ok_from < len(v):
            level_step = int(steps[ok_from])
    return {
        "peak_step": int(steps[i_peak]),
        "peak_llc": float(v[i_peak]),
        "level_step": level_step,
        "final_llc": final,
        "level_scale": "log" if use_log else "linear",
    }
