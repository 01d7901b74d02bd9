"""The one training loop, for every task and model — and for a stack of K models at once.

A single run is a stack of one. :func:`run_training` trains one config; the same loop trains
K configs that differ only in their seeds as one batched computation
(:func:`groklab.train.ensemble.train_many`): every parameter is held as one tensor with a
leading model axis, the forward runs the K models together, and each model still gets its
own run directory, metrics, checkpoints and manifest. Because the single run executes this
very code, a model trained in a stack matches the model trained alone to float tolerance.

Order of work at step ``t`` (``t`` updates done so far):

1. forward on the step's batch with the weights after ``t`` updates;
2. if ``t`` is an evaluation step: score every named subset with those same weights and
   append one metrics row per model (train metrics come from this forward in full-batch mode);
3. if ``t`` is a checkpoint step: save the weights, and the full training state (optimiser,
   filters) from which ``--resume`` continues at exactly this point;
4. unless ``t`` is the last step: backward, gradient filters, optimiser update; models that
   finished at ``t`` (early stop, divergence) take no part in it and then leave the stack.

Nothing else touches the host between evaluation steps: no ``.item()``, no per-step I/O, no
per-parameter Python work (fused AdamW). So a resumed run replays the same arithmetic and
ends bit-identical on CPU.

The parts the loop uses live beside it in ``train/``: ``device`` (which device), ``schedule``
(which steps checkpoint), ``stack`` (K models as one set of tensors), ``data`` (stacked task
tensors, batches), ``evaluate`` (metrics), ``state`` (the resumable training state),
``manifest`` and ``progress_bar``.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from groklab._version import __version__
from groklab.config import RunConfig, config_hash
from groklab.errors import ConfigError, GroklabError
from groklab.models import build_model
from groklab.run import first_step_at
from groklab.store import RunStore, check_new_run_dir, read_manifest
from groklab.tasks import Task, build_task
from groklab.train.data import _Batches, _Data
from groklab.train.device import check_device, resolve_device
from groklab.train.evaluate import _DTYPES, _Evaluator
from groklab.train.losses import token_losses
from groklab.train.manifest import _git_rev, _now
from groklab.train.norm import make_norm_constraint
from groklab.train.optim import lr_at, make_grad_filter, make_optimizer
from groklab.train.progress_bar import _Progress
from groklab.train.schedule import _log_checkpoints, checkpoint_schedule, is_checkpoint_step
from groklab.train.stack import _select_models, _Stack
from groklab.train.state import _check_resume_rows, _load_states, _state_tensors
from groklab.train.state import rebuild_final_checkpoint as rebuild_final_checkpoint

__all__ = [
    "check_device",
    "checkpoint_schedule",
    "is_checkpoint_step",
    "resolve_device",
    "run_training",
    "train_stack",
]


# --------------------------------------------------------------------------- entry points


def run_training(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
    on_save: Callable[[Path], None] | None = None,
) -> Path:
    """Train ``config`` into the run directory ``out`` (or continue it with ``resume``).

    Args:
        config: the run's config (ignored on resume: the directory's own config is used).
        out: run directory.
        resume: continue the killed/stopped run in ``out`` from its latest full state.
        progress: show a live progress bar.
        init_state: optional initial weights (e.g. from another run's checkpoint).
        on_save: called with the run directory after each full save (checkpoint, metrics
            and resumable state written), e.g. to ship the new files elsewhere.

    Returns:
        The run directory.
    """
    return train_stack(
        [config],
        [out],
        resume=resume,
        progress=progress,
        init_states=None if init_state is None else [init_state],
        on_save=on_save,
    )[0]


def train_stack(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path],
    *,
    resume: bool = False,
    progress: bool = True,
    init_states: Sequence[dict[str, torch.Tensor] | None] | None = None,
    on_save: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Train K runs of one shape as one batched computation (see ``ensemble.train_many``).

    The configs must agree on everything that shapes or schedules the computation; the
    caller checks that (``ensemble.check_stackable``). On resume each directory's own
    config is used and every run must stand at the same step. ``on_save``: see
    :func:`run_training` (called once per run directory saved).
    """
    if len(configs) != len(outs):
        raise ConfigError(f"{len(configs)} configs for {len(outs)} run directories")
    stores: list[RunStore] = []
    try:
        cfgs: list[RunConfig] = []
        tasks: list[Task | None] = []
        if not resume:
            # Validate everything before anything is created: the device, each task (a
            # config the task rejects must not leave a directory), each target directory.
            for config in configs:
                check_device(config.train.device)
            targets = [check_new_run_dir(out, c) for c, out in zip(configs, outs, strict=True)]
            if len(set(targets)) != len(targets):
                raise ConfigError("two runs of this batch would share one run directory")
            tasks = [build_task(c.data) for c in configs]
            for config, out in zip(configs, targets, strict=True):
                stores.append(RunStore.create(out, config))
                cfgs.append(config)
        else:
            for out in outs:
                store, config = RunStore.open_existing(Path(out))
                check_device(config.train.device)
                tasks.append(None)
                stores.append(store)
                cfgs.append(config)
        _train(
            stores,
            cfgs,
            tasks=tasks,
            resume=resume,
            progress=progress,
            init_states=list(init_states) if init_states is not None else [None] * len(cfgs),
            on_save=on_save,
        )
        return [s.path for s in stores]
    finally:
        for s in stores:
            s.close()


@dataclass
class _Member:
    """The bookkeeping of one run directory of the stack."""

    config: RunConfig
    store: RunStore
    task: Task
    chash: str
    manifest: dict[str, Any]
    prev_wall: float = 0.0
    rows: list[dict[str, float]] = field(default_factory=list)
    above_since: int | None = None
    status: str = "running"
    final_step: int = 0
    done: bool = False


@dataclass
class _Loop:
    """What the step loop works on. ``members``, ``stack``, ``opt``, ``filt``, ``data``,
    ``batches`` and ``evaluate`` shrink together when finished models leave the stack."""

    config: RunConfig  # the stack's shared config (members[0]'s)
    device: torch.device
    members: list[_Member]
    stack: _Stack
    opt: torch.optim.Optimizer
    filt: Any
    norm_ctls: list[Any]
    data: _Data
    batches: _Batches
    evaluate: _Evaluator
    task: Task
    start: int = 0
    t0: float = 0.0
    bar: Any = None
    log_ckpts: Any = None
    n_done_seen: int = 0
    active: torch.Tensor | None = None  # [K] bool mask, once a model has finished
    on_save: Callable[[Path], None] | None = None  # after each run's full save

    @property
    def loss_dtype(self) -> torch.dtype:
        return _DTYPES[self.config.train.loss_dtype]

    def is_ckpt(self, t: int) -> bool:
        tc = self.config.train
        return is_checkpoint_step(t, tc.steps, tc.checkpoint_every, self.log_ckpts)


def _train(
    stores: Sequence[RunStore],
    configs: Sequence[RunConfig],
    *,
    tasks: Sequence[Task | None],
    resume: bool,
    progress: bool,
    init_states: Sequence[dict[str, torch.Tensor] | None],
    on_save: Callable[[Path], None] | None = None,
) -> None:
    """Set up (or resume) the stack, run the step loop, and mark every run's end."""
    lp = _set_up(stores, configs, tasks=tasks, resume=resume, init_states=init_states)
    lp.on_save = on_save
    _start_manifests(lp, resume=resume)
    tc = lp.config.train
    lp.log_ckpts = _log_checkpoints(tc.steps, tc.checkpoint_every, tc.log_checkpoints)
    k_ = len(lp.members)
    name = lp.config.name if k_ == 1 else f"{lp.config.name} ×{k_}"
    lp.bar = _Progress(progress, tc.steps, lp.start, name)
    lp.t0 = time.perf_counter()
    t = lp.start
    try:
        for t in range(lp.start, tc.steps + 1):
            if _step(lp, t):
                break
    except BaseException as e:
        _record_abort(lp.members, e)
        lp.bar.close()
        raise
    lp.bar.close()
    for m in lp.members:
        if not m.done:  # diverged at a checkpoint-free step, or the loop ended otherwise
            _finish(lp, m, "completed", t)


# --------------------------------------------------------------------------- set-up, resume


def _set_up(
    stores: Sequence[RunStore],
    configs: Sequence[RunConfig],
    *,
    tasks: Sequence[Task | None],
    resume: bool,
    init_states: Sequence[dict[str, torch.Tensor] | None],
) -> _Loop:
    """Build the members, their models as one stack, the optimiser, filters and data; on
    resume, load the saved training state and the metrics logged before it."""
    config = configs[0]
    device = resolve_device(config.train.device)
    members: list[_Member] = []
    models = []
    for store, cfg, task, init_state in zip(stores, configs, tasks, init_states, strict=True):
        task = task if task is not None else build_task(cfg.data)
        model = build_model(cfg.model, task, seed=cfg.train.seed)
        resumable = resume and (store.path / "state.safetensors").exists()
        if init_state is None and cfg.train.init_from is not None and not resumable:
            from groklab.init_from import init_weights  # train.init_from = DIR@STEP

            init_state = init_weights(cfg.train.init_from, model)
        if init_state is not None:
            model.load_state_dict(init_state, strict=True)
        models.append(model)
        manifest = read_manifest(store.path) if resume else {}
        members.append(
            _Member(
                cfg,
                store,
                task,
                config_hash(cfg),
                manifest,
                prev_wall=float(manifest.get("wall_seconds") or 0.0),
            )
        )
    stack = _Stack(models, device)
    del models
    opt = make_optimizer(stack.params, config.optim)
    filt = make_grad_filter(stack.params, config.optim, stacked=True)
    # optim.fixed_norm holds each model's own total norm; resolved before resume loads weights.
    norm_ctls = []
    if config.optim.fixed_norm is not None:
        with torch.no_grad():
            views = [[p[k] for p in stack.params] for k in range(len(members))]
        norm_ctls = [make_norm_constraint(v, config.optim) for v in views]
    task = members[0].task
    data = _Data.of([m.task for m in members], device)
    batches = _Batches([m.task for m in members], data, configs)
    lp = _Loop(
        config=config,
        device=device,
        members=members,
        stack=stack,
        opt=opt,
        filt=filt,
        norm_ctls=norm_ctls,
        data=data,
        batches=batches,
        evaluate=_Evaluator(stack, data, task, config),
        task=task,
    )
    state_paths = [m.store.path / "state.safetensors" for m in members]
    if resume and any(p.exists() for p in state_paths):
        lp.start = _load_states(state_paths, stack, opt, filt, [m.chash for m in members])
        for m in members:
            m.rows = [r for r in m.store.read_metrics() if r["step"] < lp.start]
            _check_resume_rows(m.store.path, m.rows, lp.start, m.config.train.eval_every)
    return lp


def _start_manifests(lp: _Loop, *, resume: bool) -> None:
    """Write each run's manifest as ``running``; on resume, rebuild the early-stop streak
    from the metrics logged so far."""
    tc = lp.config.train
    device = lp.device
    k_ = len(lp.members)
    n_params = sum(p[0].numel() for p in lp.stack.params)
    for k, m in enumerate(lp.members):
        m.manifest.update(
            {
                "format": "groklab-run-1",
                "groklab_version": __version__,
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "device": str(device),
                "device_name": (
                    torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else platform.machine()
                ),
                "torch_threads": torch.get_num_threads(),
                "seed": m.config.train.seed,
                "split_seed": m.config.data.split_seed,
                "split_hash": m.task.split_hash,
                "config_hash": m.chash,
                "git_rev": _git_rev(),
                "n_params": n_params,
                "n_train": m.task.n_train,
                "n_test": m.task.n_test,
                "d_vocab": m.task.d_vocab,
                "d_vocab_out": m.task.d_vocab_out,
                "n_ctx": m.task.n_ctx,
                "status": "running",
                "created_at": m.manifest.get("created_at", _now()),
                "started_at": _now(),
                "resumed_from_step": lp.start if resume else None,
            }
        )
        if k_ > 1:
            m.manifest["stack"] = {
                "size": k_,
                "index": k,
                "runs": [str(o.store.path) for o in lp.members],
            }
        m.store.write_manifest(m.manifest)
        if tc.stop_test_acc is not None:
            for r in m.rows:  # rebuild the early-stop streak of a resumed run from its metrics
                if r["test/acc"] < tc.stop_test_acc:
                    m.above_since = None
                elif m.above_since is None:
                    m.above_since = int(r["step"])


# --------------------------------------------------------------------------- the step loop


def _step(lp: _Loop, t: int) -> bool:
    """Step ``t`` in the order of the module docstring. Returns True when the loop ends."""
    tc = lp.config.train
    lr = lr_at(t, lp.config.optim)
    for g in lp.opt.param_groups:
        g["lr"] = lr
    x, y = lp.batches.get(t)
    logits = lp.stack.logits(x, lp.task.n_scored)  # [K, batch, n_scored, d_vocab_out]
    tok = token_losses(logits, y, kind=tc.loss, dtype=lp.loss_dtype)  # [K, batch, n_scored]
    per_model = tok.flatten(1).mean(1)  # [K]
    last = t == tc.steps
    stopping: set[int] = set()
    if t % tc.eval_every == 0 or last:
        stopping = _evaluate_and_log(lp, t, lr, logits, tok, y)
    elif t % 50 == 0:
        lp.bar.update(t)
    if lp.is_ckpt(t) or last or stopping:
        _checkpoint_and_stop(lp, t, per_model, last=last, stopping=stopping)
    n_done = sum(m.done for m in lp.members)
    if last or n_done == len(lp.members):
        return True
    _update(lp, per_model, n_done)
    return False


def _update(lp: _Loop, per_model: torch.Tensor, n_done: int) -> None:
    """Backward, gradient filters, optimiser step and norm constraints for the models still
    training; then the finished ones leave the stack."""
    if n_done != lp.n_done_seen:
        lp.n_done_seen = n_done
        lp.active = torch.tensor([not m.done for m in lp.members], device=lp.device)
    # A model that finished at this step takes no part in its update ...
    active = lp.active
    loss = per_model.sum() if active is None else torch.where(active, per_model, 0).sum()
    lp.opt.zero_grad(set_to_none=True)
    loss.backward()
    if lp.filt.active:
        lp.filt.apply()
    lp.opt.step()
    for ctl in lp.norm_ctls:
        ctl.apply()
    if active is not None and not lp.norm_ctls:
        # ... and then leaves the stack, so that it costs nothing after it stopped: the
        # others go on as a smaller stack (weights, optimiser and filter state sliced).
        # (optim.fixed_norm constrains views of the whole stack: that one stays whole.)
        _drop_finished(lp)


def _drop_finished(lp: _Loop) -> None:
    keep = torch.tensor([k for k, m in enumerate(lp.members) if not m.done], device=lp.device)
    lp.members = [lp.members[k] for k in keep.tolist()]
    lp.stack, lp.opt, lp.filt = _select_models(keep, lp.stack, lp.opt, lp.filt, lp.config)
    lp.data = lp.data.select(keep)
    lp.batches = _Batches([m.task for m in lp.members], lp.data, [m.config for m in lp.members])
    lp.evaluate = _Evaluator(lp.stack, lp.data, lp.task, lp.config)
    lp.n_done_seen, lp.active = 0, None


# --------------------------------------------------------------------------- evaluation, logging


def _evaluate_and_log(
    lp: _Loop, t: int, lr: float, logits: torch.Tensor, tok: torch.Tensor, y: torch.Tensor
) -> set[int]:
    """Score every subset with the step's weights, append one metrics row per model still
    training, mark diverged models, and keep the early-stop streaks.

    Returns:
        The stack indices of the models whose early stop is due at this step.
    """
    tc = lp.config.train
    train_tok = None
    if lp.batches.full:
        with torch.no_grad():
            train_tok = (tok.detach(), (logits.detach().argmax(-1) == y).to(lp.loss_dtype))
    vals = lp.evaluate(train_tok)
    vals.update(lp.stack.weight_norms())
    keys = list(vals)
    host = torch.stack([vals[key].to(torch.float64) for key in keys]).cpu().tolist()
    shown = []
    stopping: set[int] = set()
    for k, m in enumerate(lp.members):
        if m.done:
            continue
        row = {"step": t, "lr": lr, **{key: host[i][k] for i, key in enumerate(keys)}}
        m.rows.append(row)
        shown.append(row)
        tl = row["train/loss"]
        if not math.isfinite(tl) or tl > tc.diverge_loss:
            _finish(lp, m, "diverged", t)
            continue
        if tc.stop_test_acc is not None:
            if row["test/acc"] >= tc.stop_test_acc:
                m.above_since = t if m.above_since is None else m.above_since
                if t - m.above_since >= tc.stop_patience:
                    stopping.add(k)
            else:
                m.above_since = None
    lp.bar.update(t, shown)
    return stopping


# --------------------------------------------------------------------------- checkpoints, stops


def _checkpoint_and_stop(
    lp: _Loop, t: int, per_model: torch.Tensor, *, last: bool, stopping: set[int]
) -> None:
    """At a checkpoint, the last step or an early stop: catch a divergence between
    evaluations, save each model's weights, full state and metrics, and mark the runs that
    end here ``completed``."""
    tc = lp.config.train
    if t % tc.eval_every != 0 and not last:
        for k, lv in enumerate(per_model.detach().cpu().tolist()):
            m = lp.members[k]
            if not m.done and (not math.isfinite(lv) or lv > tc.diverge_loss):
                _finish(lp, m, "diverged", t)
    for k, m in enumerate(lp.members):
        if m.done or not (lp.is_ckpt(t) or last or k in stopping):
            continue
        meta = {"config_hash": m.chash, "groklab_version": __version__}
        m.store.write_checkpoint(t, lp.stack.member_weights(k), meta)
        tensors, smeta = _state_tensors(lp.stack, k, lp.opt, lp.filt)
        m.store.write_metrics(m.rows)
        m.store.write_state(t, tensors, {**meta, **smeta})
        if lp.on_save is not None:
            lp.on_save(m.store.path)
        if last or k in stopping:
            _finish(lp, m, "completed", t)


def _finish(lp: _Loop, m: _Member, status: str, t: int) -> None:
    """Mark run ``m`` ended at step ``t`` with ``status``: its metrics and final manifest."""
    m.done, m.status, m.final_step = True, status, t
    wall = time.perf_counter() - lp.t0
    done = t - lp.start
    m.store.write_metrics(m.rows)
    logged = pd.DataFrame(m.rows)
    m.manifest.update(
        {
            "status": status,
            "finished_at": _now(),
            "final_step": t,
            "wall_seconds": round(wall + m.prev_wall, 3),
            "seconds_per_step": wall / done if done else None,
            "memorisation_step": first_step_at(logged, "train/acc"),
            "grokking_step": first_step_at(logged, "test/acc"),
        }
    )
    m.store.write_manifest(m.manifest)


def _record_abort(members: Sequence[_Member], e: BaseException) -> None:
    """The loop was left by an exception: record it in every unfinished run's manifest.

    Ctrl-C is not a failure of the run: it is recorded as interrupted (resumable).
    """
    interrupted = isinstance(e, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    error = "KeyboardInterrupt (Ctrl-C)" if interrupted else f"{type(e).__name__}: {e}"
    for m in members:
        if m.done:
            continue
        m.manifest.update({"status": status, "error": error})
        # Best effort: on a full disk these writes fail too, and the files already saved
        # (the last checkpoint, state and metrics) stay as they were.
        with contextlib.suppress(GroklabError, OSError):
            m.store.write_metrics(m.rows)
        with contextlib.suppress(GroklabError, OSError):
            m.store.write_manifest(m.manifest)
