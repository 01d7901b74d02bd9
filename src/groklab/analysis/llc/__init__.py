"""Local learning coefficient (LLC) by SGLD, with diagnostics, calibration and caching.

The estimator (Lau et al. 2023, as in devinterp): draw weights near a trained ``w*`` with
stochastic-gradient Langevin dynamics on the tempered, localised posterior

    w <- w - (eps/2) [nbeta * grad L_m(w) + gamma (w - w*)] + N(0, eps)

and read the LLC off the mean training loss of the draws:

    llc = nbeta * (mean_{draws} L_m(w) - L(w*)).

``L_m`` is the loss on a minibatch of ``m`` training rows (or the full training set),
``L(w*)`` is always measured on the full training data, ``nbeta`` defaults to ``n / log n``
with ``n`` the number of training rows. Burn-in steps are discarded. Every chain runs in one
batched computation (``torch.func.vmap`` over stacked weights), not one after another.

Every estimate comes with its diagnostics (:class:`LLCResult`): the loss traces, the mean and
spread over chains, the ratio of the estimate from the second half of the draws to the first
half's (convergence), the share of draws below ``L(w*)``, and the chains that diverged
(non-finite loss, a loss above a bound, or a per-chain estimate above ``d/2``, which no model
with ``d`` parameters can have). Diverged chains are excluded and named in ``warnings``: the
estimator never hands back an enormous number in silence. With ``gamma > 0`` every estimate
also carries a :class:`GammaCheck`: the estimate at ``gamma / 3`` and ``gamma * 3`` (half the
chains each, so the check doubles the cost) and ``d log LLC / d log gamma``; beyond
:data:`GAMMA_SENSITIVE` the localisation, not the loss landscape, sets the value and the
result says so in ``warnings``.

Which data ``--subset`` selects: the LLC describes the *training* loss landscape, so a subset
restricts the loss to the *training* rows of one operation. ``add``, ``train/add`` and
``test/add`` all select the training problems of addition (``train/add``); ``total`` (the
default) is the whole training set. With a subset, ``n`` (for ``nbeta`` and the minibatches)
is that subset's number of training rows.

Example::

    from groklab import load_run
    from groklab.analysis import llc

    run = load_run("runs/nanda2023")
    res = llc.estimate_llc_at(run, 5000)               # LLCSettings() defaults
    print(res.llc, res.llc_std, res.convergence_ratio, res.warnings)
    df = llc.llc_over_checkpoints(run, every=500)      # cached in runs/nanda2023/analysis/llc/
"""

from __future__ import annotations

from groklab.analysis.llc.cache import (
    CALIBRATION_FILE,
    LLC_DIR,
    llc_over_checkpoints,
    read_cache,
)
from groklab.analysis.llc.calibration import (
    Calibration,
    calibrate,
    judge,
    load_calibration,
)
from groklab.analysis.llc.curve import landmarks
from groklab.analysis.llc.gamma import GAMMA_SENSITIVE, GammaCheck
from groklab.analysis.llc.result import LLCResult
from groklab.analysis.llc.result import _summarise as _summarise  # used by tests
from groklab.analysis.llc.runs import default_max_loss, estimate_llc_at, resolve_subset, run_loss
from groklab.analysis.llc.sampler import LossFn, estimate_llc
from groklab.analysis.llc.settings import LLCSettings, resolve_nbeta

__all__ = [
    "CALIBRATION_FILE",
    "GAMMA_SENSITIVE",
    "LLC_DIR",
    "Calibration",
    "GammaCheck",
    "LLCResult",
    "LLCSettings",
    "LossFn",
    "calibrate",
    "default_max_loss",
    "estimate_llc",
    "estimate_llc_at",
    "judge",
    "landmarks",
    "llc_over_checkpoints",
    "load_calibration",
    "read_cache",
    "resolve_nbeta",
    "resolve_subset",
    "run_loss",
]
