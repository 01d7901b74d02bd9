"""The SGLD sampler: every chain in one batched computation, and :func:`estimate_llc`.

:class:`_Flat` lays named parameters out in one flat vector; :func:`_run_chains` runs SGLD on
the tempered, localised posterior for ``C`` chains at once (``torch.func.vmap`` over the
stacked weights, or a loss that is already batched over chains) with per-chain step size,
localisation and inverse temperature, so that one computation can sweep settings. It returns
the loss trace; :func:`estimate_llc` turns it into an :class:`LLCResult` for any loss
function, and adds the γ check from one more batched run on its own seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from groklab.analysis.llc.gamma import GAMMA_SENSITIVE, _gamma_check
from groklab.analysis.llc.result import LLCResult, _summarise
from groklab.analysis.llc.settings import LLCSettings, resolve_nbeta
from groklab.errors import ConfigError

LossFn = Callable[[Any, "torch.Tensor | None"], torch.Tensor]
"""``loss_fn(params, rows) -> 0-d tensor``: the loss at ``params`` (a dict of tensors, or one
tensor) on the training rows ``rows`` (a long tensor ``[m]``) or on all of them (``None``).
It must be made of plain torch operations so that it can be vmapped over chains."""


class _Flat:
    """Named parameters laid out in one flat vector ``[P]`` (and back)."""

    def __init__(self, params: Mapping[str, torch.Tensor] | torch.Tensor) -> None:
        self.single = isinstance(params, torch.Tensor)
        items = {"w": params} if self.single else dict(params)
        if not items:
            raise ConfigError("llc: no parameters to sample")
        self.names = list(items)
        self.shapes = [tuple(t.shape) for t in items.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.sizes)
        self.w_star = torch.cat([t.detach().reshape(-1) for t in items.values()])

    def views(self, flat: torch.Tensor) -> Any:
        """``flat [..., P]`` → the params as views (a dict, or one tensor)."""
        lead = flat.shape[:-1]
        out, off = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = flat[..., off : off + size].view((*lead, *shape))
            off += size
        return out["w"] if self.single else out


def _run_chains(
    loss_fn: LossFn,
    flat: _Flat,
    *,
    n: int,
    eps: torch.Tensor,
    gamma: torch.Tensor,
    nbeta: torch.Tensor,
    steps: int,
    batch_size: int | None,
    seed: int,
    w0: torch.Tensor | None = None,
    batched: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """SGLD for ``C`` chains at once; returns the loss trace ``[C, steps]`` (float64).

    ``loss_fn`` is one chain's loss (vmapped here), or with ``batched`` already the losses
    ``[C]`` of all chains from stacked parameters ``[C, ...]`` and rows ``[C, m]``.

    ``eps``, ``gamma``, ``nbeta`` are per-chain ``[C]`` (so one batched computation can
    sweep settings); ``w0`` ``[C, P]`` per-chain centres (default: ``w*`` for every chain).
    The loss recorded at step ``t`` is the minibatch loss at the weights before step ``t``'s
    update, as in devinterp.
    """
    n_chains = eps.shape[0]
    dev, dtype = flat.w_star.device, flat.w_star.dtype
    center = flat.w_star.expand(n_chains, -1) if w0 is None else w0
    w = center.clone()  # [chain, P], updated in place
    gen = torch.Generator(device=dev).manual_seed(seed)
    e = eps.to(dev, dtype)[:, None]
    g = gamma.to(dev, dtype)[:, None]
    nb = nbeta.to(dev, dtype)[:, None]
    sqrt_e = e.sqrt()
    trace = torch.empty(n_chains, steps, dtype=torch.float64, device=dev)

    full = batch_size is None or batch_size >= n
    # vmap over chains for the forward pass, one autograd backward for all chains: chains are
    # independent, so the gradient of the summed loss w.r.t. chain c's weights is chain c's
    # gradient. (Cheaper per step than vmap(grad(...)) on CPU.)
    if batched:
        fwd = (lambda p: loss_fn(p, None)) if full else loss_fn
    else:
        fwd = vmap(lambda p: loss_fn(p, None)) if full else vmap(loss_fn)
    per_epoch = 1 if full else n // batch_size
    perm = torch.empty(0, dtype=torch.long)
    shapes = [(n_chains, *sh) for sh in flat.shapes]
    offsets = np.cumsum([0, *flat.sizes]).tolist()
    # The update w <- w - (eps/2)[nbeta grad + gamma (w - w0)] + sqrt(eps) xi, split into a
    # flat part on w [chain, P] (localisation, noise) and a per-parameter part (gradient), so
    # the gradients are never copied into one flat buffer.
    keep = 1 - 0.5 * e * g  # [chain, 1]
    pull = (0.5 * e * g) * center  # [chain, P], constant
    has_gamma = bool((g != 0).any())
    grad_scale = [(-0.5 * e * nb).view(n_chains, *([1] * len(sh))) for sh in flat.shapes]
    for t in range(steps):
        # Leaves that share memory with w: the update below writes through to them.
        leaves = [
            w[:, a:b].view(sh).detach().requires_grad_()
            for a, b, sh in zip(offsets[:-1], offsets[1:], shapes, strict=True)
        ]
        p = leaves[0] if flat.single else dict(zip(flat.names, leaves, strict=True))
        if full:
            loss = fwd(p)
        else:
            j = t % per_epoch
            if j == 0:  # a fresh shuffle of the training rows for every chain
                keys = torch.rand(n_chains, n, generator=gen, device=dev)
                perm = keys.argsort(dim=1)
            rows = perm[:, j * batch_size : (j + 1) * batch_size]  # [chain, m]
            loss = fwd(p, rows)
        grads = torch.autograd.grad(loss.sum(), leaves, materialize_grads=True)
        trace[:, t] = loss.detach()
        with torch.no_grad():
            if has_gamma:
                w.mul_(keep).add_(pull)
            w.add_(torch.randn(w.shape, generator=gen, device=dev, dtype=dtype).mul_(sqrt_e))
            for leaf, gr, sc in zip(leaves, grads, grad_scale, strict=True):
                leaf.addcmul_(gr, sc)  # leaf is a view of w
        if progress is not None and (t + 1) % 25 == 0:
            progress(t + 1, steps)
    return trace


def _init_loss(loss_fn: LossFn, flat: _Flat, batched: bool) -> float:
    """``L(w*)`` on the full training data."""
    with torch.no_grad():
        if batched:
            return float(loss_fn(flat.views(flat.w_star[None]), None)[0])
        return float(loss_fn(flat.views(flat.w_star), None))


def estimate_llc(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    n: int,
    settings: LLCSettings | None = None,
    init_loss: float | None = None,
    max_loss: float | None = None,
    batched: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LLCResult:
    """Estimate the LLC of the loss ``loss_fn`` at ``params`` (the trained ``w*``).

    Args:
        loss_fn: ``loss_fn(params, rows) -> 0-d tensor``; ``rows`` is a long tensor of
            training-row indices ``[m]`` or ``None`` (all ``n`` rows). It is vmapped over
            chains, so it must use plain torch operations (no ``.item()``, no in-place
            writes into ``params``). A loss without data may ignore ``rows``.
        params: ``w*``: a dict of tensors (e.g. ``dict(model.named_parameters())``) or one
            tensor. Not modified.
        n: training rows (for ``nbeta = n / log n`` and the minibatches).
        settings: sampler settings (default :class:`LLCSettings`).
        init_loss: ``L(w*)`` if already known (default: ``loss_fn(params, None)``).
        max_loss: loss bound above which a chain counts as diverged (default
            ``settings.max_loss``; ``None`` = no bound).
        batched: ``loss_fn`` is already batched over chains: it takes the parameters with a
            leading chain axis (``[C, ...]``) and rows ``[C, m]`` (or ``None``) and returns
            ``[C]`` losses (e.g. a model's stacked forward). Otherwise it is vmapped.
        progress: called as ``progress(step, total)`` every 25 SGLD steps.

    Returns:
        The estimate with its diagnostics; with ``settings.gamma_check`` (the default) and
        ``gamma > 0`` also the :class:`GammaCheck`: the estimate at ``gamma / k`` and
        ``gamma * k`` from ``settings.check_chains`` chains each (one more batched run, on
        its own seed, so the estimate itself is the same with or without the check), and
        a warning when it is γ-sensitive.
    """
    s = settings or LLCSettings()
    if n < 1:
        raise ConfigError(f"llc: n={n} training rows; need at least 1")
    flat = _Flat(params)
    l0 = _init_loss(loss_fn, flat, batched) if init_loss is None else init_loss
    nbeta = resolve_nbeta(s.nbeta, n=n, batch_size=s.batch_size)
    bound = s.max_loss if s.max_loss is not None else max_loss
    steps = s.burnin + s.draws

    def sample(gammas: list[float], seed: int, prog: Any) -> np.ndarray:
        c = len(gammas)
        return (
            _run_chains(
                loss_fn,
                flat,
                n=n,
                eps=torch.full((c,), s.epsilon, dtype=torch.float64),
                gamma=torch.tensor(gammas, dtype=torch.float64),
                nbeta=torch.full((c,), nbeta, dtype=torch.float64),
                steps=steps,
                batch_size=s.batch_size,
                seed=seed,
                batched=batched,
                progress=prog,
            )
            .cpu()
            .numpy()
        )

    def summary(trace: np.ndarray, settings: LLCSettings, seconds: float) -> LLCResult:
        return _summarise(
            trace,
            init_loss=l0,
            nbeta=nbeta,
            n=n,
            n_params=flat.n_params,
            settings=settings,
            max_loss=bound,
            seconds=seconds,
        )

    check = s.checks_gamma
    t0 = time.perf_counter()
    # progress spans the main run and the check's (2 x check_chains chains, same steps),
    # counted in main-run steps
    r = 2 * s.check_chains / s.chains if check else 0.0
    total = round(steps * (1 + r))
    main_prog = None if progress is None else (lambda t, _: progress(t, total))
    trace = sample([s.gamma] * s.chains, s.seed, main_prog)
    main_seconds = time.perf_counter() - t0
    res = summary(trace, s, main_seconds)
    if not check:
        return res
    k, cc = float(s.gamma_check or 3.0), s.check_chains
    lo_s, hi_s = replace(s, gamma=s.gamma / k), replace(s, gamma=s.gamma * k)
    side_prog = None if progress is None else (lambda t, _: progress(round(steps + t * r), total))
    side = sample([lo_s.gamma] * cc + [hi_s.gamma] * cc, s.seed + 1, side_prog)
    gc = _gamma_check(k, summary(side[:cc], lo_s, 0.0), summary(side[cc:], hi_s, 0.0))
    warns = res.warnings
    if gc.sensitive:
        warns = (
            *warns,
            f"γ-sensitive: {gc.describe()} (|elasticity| > {GAMMA_SENSITIVE:g}); the "
            "localisation, not the loss landscape, sets this estimate",
        )
    return replace(res, gamma_check=gc, warnings=warns, seconds=time.perf_counter() - t0)
