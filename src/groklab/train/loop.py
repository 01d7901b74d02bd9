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
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from groklab._version import __version__
from groklab.config import RunConfig, config_hash
from groklab.errors import CheckpointError, ConfigError, GroklabError, RunDamagedError
from groklab.models import build_model
from groklab.store import RunStore, check_new_run_dir, load_checkpoint, read_manifest
from groklab.tasks import Task, build_task
from groklab.train.losses import token_losses
from groklab.train.norm import make_norm_constraint
from groklab.train.optim import lr_at, make_grad_filter, make_optimizer

__all__ = [
    "check_device",
    "checkpoint_schedule",
    "is_checkpoint_step",
    "resolve_device",
    "run_training",
    "train_stack",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> torch.device:
    """The device ``name`` resolves to, checked to exist on this machine.

    Raises:
        ConfigError: CUDA asked for where there is none, or a CUDA index out of range.
    """
    device = resolve_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={name!r} is not allowed here: this machine has no CUDA device; "
                "allowed: auto, cpu"
            )
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise ConfigError(
                f"train.device={name!r} is not allowed here: this machine has {n} CUDA "
                f"device(s); allowed: auto, cpu, cuda, cuda:0..cuda:{n - 1}"
            )
    return device


def _log_checkpoints(steps: int, every: int, n_log: int) -> set[int]:
    out: set[int] = set()
    if n_log > 0 and every > 1:
        hi = math.log(every)
        for i in range(n_log):
            out.add(round(math.exp(hi * (i + 1) / (n_log + 1))))
    return {s for s in out if 0 <= s <= steps}


def is_checkpoint_step(t: int, steps: int, every: int, log_steps: set[int]) -> bool:
    """Whether step ``t`` is in :func:`checkpoint_schedule` (without building it)."""
    return 0 <= t <= steps and (t % every == 0 or t == steps or t in log_steps)


def checkpoint_schedule(steps: int, every: int, n_log: int) -> set[int]:
    """Steps to checkpoint: 0, every ``every``, the last, plus ``n_log`` log-spaced early ones.

    Builds the whole set; the loop asks :func:`is_checkpoint_step` instead, which costs
    nothing however long the run.
    """
    return set(range(0, steps + 1, every)) | {steps} | _log_checkpoints(steps, every, n_log)


def _git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the stack


class _Stack:
    """K models of one config as leaf tensors with a leading model axis.

    Transformers run through :func:`~groklab.models.transformer.stacked_forward`; other
    models through ``torch.func.functional_call`` (vectorised with ``vmap`` when K > 1).
    """

    def __init__(self, models: Sequence[torch.nn.Module], device: torch.device) -> None:
        self.template = models[0]
        self.k = len(models)
        self.names = [n for n, _ in self.template.named_parameters()]
        own = [dict(m.named_parameters()) for m in models]
        self.params = [
            torch.stack([o[n].detach() for o in own]).to(device).requires_grad_()
            for n in self.names
        ]
        # Persistent buffers (none in the built-in models) are constants of each model.
        param_names = set(self.names)
        self.buffers = [
            {n: b.detach().to(device) for n, b in m.state_dict().items() if n not in param_names}
            for m in models
        ]
        self.transformer = getattr(self.template, "cfg", None) is not None and (
            self.template.cfg.arch == "transformer"
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.params, strict=True))

    def select(self, keep: torch.Tensor) -> _Stack:
        """A new stack of the models ``keep`` (indices), as fresh leaf tensors."""
        out = object.__new__(_Stack)
        out.template, out.names, out.transformer = self.template, self.names, self.transformer
        out.k = len(keep)
        with torch.no_grad():
            out.params = [p.index_select(0, keep).requires_grad_() for p in self.params]
        out.buffers = [self.buffers[i] for i in keep.tolist()]
        return out

    def logits(self, x: torch.Tensor, n_out: int) -> torch.Tensor:
        """Logits ``[K, batch, n_out, d_vocab_out]`` of inputs ``x [K, batch, ...]``."""
        if self.transformer:
            from groklab.models.transformer import stacked_forward

            return stacked_forward(self.template.cfg, self.weights(), x, n_out=n_out)
        from torch.func import functional_call, vmap

        def one(w: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, w, (xx,), {"n_scored": n_out})

        if self.k == 1:
            w = {n: p.squeeze(0) for n, p in self.weights().items()}
            return one(w, x.squeeze(0)).unsqueeze(0)
        return vmap(one)(self.weights(), x)

    @torch.no_grad()
    def member_weights(self, k: int) -> dict[str, torch.Tensor]:
        """The state dict of model ``k``."""
        out = {n: p[k] for n, p in zip(self.names, self.params, strict=True)}
        out.update(self.buffers[k])
        return out

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, torch.Tensor], where: str) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise CheckpointError(
                f"{where}: does not match this run's model (missing {missing[0]})"
            )
        for n, p in zip(self.names, self.params, strict=True):
            if tuple(state[n].shape) != tuple(p.shape[1:]):
                raise CheckpointError(
                    f"{where}: does not match this run's model ({n} has shape "
                    f"{tuple(state[n].shape)}, expected {tuple(p.shape[1:])})"
                )
            p[k].copy_(state[n])

    def weight_norms(self) -> dict[str, torch.Tensor]:
        """``wnorm/<param>`` and ``wnorm/total`` of every model, each ``[K]``."""
        with torch.no_grad():
            norms = {
                f"wnorm/{n}": p.detach().flatten(1).norm(dim=1)
                for n, p in zip(self.names, self.params, strict=True)
            }
            sq = torch.stack([v.to(torch.float64) ** 2 for v in norms.values()]).sum(0)
            norms["wnorm/total"] = sq.sqrt()
        return norms


def _member_slice(v: torch.Tensor, k: int) -> torch.Tensor:
    """Model ``k``'s part of a stacked state tensor (0-d tensors, e.g. step counts, are shared)."""
    return v if v.dim() == 0 else v[k]


def _stack_parts(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0].clone() if parts[0].dim() == 0 else torch.stack(parts)


def _pick(v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The models ``keep`` of a stacked state tensor (0-d tensors, e.g. step counts, are shared)."""
    return v if v.dim() == 0 else v.index_select(0, keep)


def _select_models(
    keep: torch.Tensor, stack: _Stack, opt: torch.optim.Optimizer, filt: Any, config: RunConfig
) -> tuple[_Stack, torch.optim.Optimizer, Any]:
    """Stack, optimiser and gradient filter of the models ``keep`` only, states carried over."""
    new = stack.select(keep)
    sd = opt.state_dict()
    new_opt = make_optimizer(new.params, config.optim)
    new_opt.load_state_dict(
        {
            "state": {
                i: {key: _pick(v, keep) if torch.is_tensor(v) else v for key, v in st.items()}
                for i, st in sd["state"].items()
            },
            "param_groups": sd["param_groups"],
        }
    )
    new_filt = make_grad_filter(new.params, config.optim, stacked=True)
    new_filt.load_state({n: _pick(v, keep) for n, v in filt.state.items()})
    return new, new_opt, new_filt


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    """Task tensors of every model on the training device, stacked ``[K, ...]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # name → (split, row indices of each model or None, scored position or None)
    subsets: dict[str, tuple[str, list[torch.Tensor] | None, int | None]]

    @classmethod
    def of(cls, tasks: Sequence[Task], device: torch.device) -> _Data:
        first = tasks[0]
        for t in tasks[1:]:
            for name in ("train_x", "train_y", "test_x", "test_y"):
                a, b = getattr(first, name), getattr(t, name)
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise ConfigError(
                        f"data: the stacked runs need splits of one shape; {name} is "
                        f"{tuple(a.shape)} in the first and {tuple(b.shape)} in another run"
                    )
            if set(t.subsets) != set(first.subsets):
                raise ConfigError("data: the stacked runs need the same evaluation subsets")

        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(t, name) for t in tasks]).to(device)

        subsets: dict[str, tuple[str, list[torch.Tensor] | None, int | None]] = {}
        for name, s in first.subsets.items():
            rows = None
            if s.rows is not None:
                rows = [t.subsets[name].rows.to(device) for t in tasks]
            subsets[name] = (s.split, rows, s.position)
        return cls(stack("train_x"), stack("train_y"), stack("test_x"), stack("test_y"), subsets)

    def select(self, keep: torch.Tensor) -> _Data:
        """The data of the models ``keep`` (indices)."""
        idx = keep.tolist()
        subsets = {
            name: (split, None if rows is None else [rows[i] for i in idx], pos)
            for name, (split, rows, pos) in self.subsets.items()
        }
        return _Data(
            *(
                getattr(self, n).index_select(0, keep)
                for n in ("train_x", "train_y", "test_x", "test_y")
            ),
            subsets,
        )


class _Batches:
    """Stateless batch schedule: the batch of model k at step t depends only on (seed_k, t)."""

    def __init__(self, tasks: Sequence[Task], data: _Data, cfgs: Sequence[RunConfig]) -> None:
        self.tasks, self.data = list(tasks), data
        self.seeds = [c.train.seed for c in cfgs]
        task = tasks[0]
        n = task.n_train
        b = cfgs[0].train.batch_size
        self.full = task.sampler is None and (b is None or b >= n)
        self.b = b or n
        self.per_epoch = max(n // self.b, 1)
        self._epoch, self._perm = -1, None

    def _gen(self, seed: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[K, batch, ...]`` and targets ``[K, batch, n_scored]`` of step ``t``."""
        d = self.data
        dev = d.train_x.device
        if self.full:
            return d.train_x, d.train_y
        if self.tasks[0].sampler is not None:
            xs, ys = zip(
                *(
                    task.sampler(self._gen(seed, t), self.b)
                    for task, seed in zip(self.tasks, self.seeds, strict=True)
                ),
                strict=True,
            )
            return torch.stack(xs).to(dev), torch.stack(ys).to(dev)
        epoch, i = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            n = self.tasks[0].n_train
            perm = [torch.randperm(n, generator=self._gen(s, epoch)) for s in self.seeds]
            self._perm = torch.stack(perm).to(dev)  # [K, n]
        idx = self._perm[:, i * self.b : (i + 1) * self.b]  # [K, batch]
        return _take(d.train_x, idx), _take(d.train_y, idx)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [K, batch]`` of each model's ``x [K, n, ...]``."""
    model = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[model, idx]


class _Evaluator:
    """Scores train, test and every named subset of every model; no host transfer."""

    def __init__(self, stack: _Stack, data: _Data, task: Task, cfg: RunConfig) -> None:
        self.stack, self.data, self.task = stack, data, task
        self.kind, self.dtype = cfg.train.loss, _DTYPES[cfg.train.loss_dtype]
        self.chunk = max(16384 // stack.k, 512)

    def _per_token(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, correct = [], []
        for i in range(0, x.shape[1], self.chunk):
            logits = self.stack.logits(x[:, i : i + self.chunk], self.task.n_scored)
            yy = y[:, i : i + self.chunk]
            losses.append(token_losses(logits, yy, kind=self.kind, dtype=self.dtype))
            correct.append((logits.argmax(-1) == yy).to(self.dtype))
        if not losses:
            empty = torch.empty(
                self.stack.k, 0, self.task.n_scored, dtype=self.dtype, device=x.device
            )
            return empty, empty
        return torch.cat(losses, dim=1), torch.cat(correct, dim=1)

    @torch.no_grad()
    def __call__(
        self, train_tok: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Every metric as a ``[K]`` tensor (NaN where a subset is empty)."""
        d = self.data
        per_split = {
            "train": train_tok if train_tok is not None else self._per_token(d.train_x, d.train_y),
            "test": self._per_token(d.test_x, d.test_y),
        }
        k_ = self.stack.k
        nan = torch.full((k_,), float("nan"), dtype=self.dtype, device=d.train_x.device)

        def mean(v: torch.Tensor) -> torch.Tensor:  # [K, ...] → [K]
            return v.flatten(1).mean(1) if v[0].numel() else nan

        out: dict[str, torch.Tensor] = {}
        for split, (loss, corr) in per_split.items():
            out[f"{split}/loss"], out[f"{split}/acc"] = mean(loss), mean(corr)
        for name, (split, rows, pos) in d.subsets.items():
            loss, corr = per_split[split]
            if pos is not None:
                loss, corr = loss[:, :, pos], corr[:, :, pos]
            if rows is None:
                out[f"{name}/loss"], out[f"{name}/acc"] = mean(loss), mean(corr)
                continue
            for key, v in ((f"{name}/loss", loss), (f"{name}/acc", corr)):
                out[key] = torch.stack(
                    [v[k][r].mean() if r.numel() else nan[0] for k, r in enumerate(rows)]
                )
        return out


# --------------------------------------------------------------------------- state files


def _state_tensors(
    stack: _Stack, k: int, opt: torch.optim.Optimizer, filt: Any
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Model ``k``'s full training state, in the layout of a run trained alone."""
    tensors = {f"model.{n}": v for n, v in stack.member_weights(k).items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = _member_slice(val, k)
    for key, val in filt.state.items():
        tensors[f"filter.{key}"] = _member_slice(val, k)
    meta = {"optim_groups": json.dumps(sd["param_groups"])}
    return tensors, meta


def _read_state(path: Path, chash: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "state" or meta.get("config_hash") != chash:
        raise CheckpointError(
            f"{path}: training state of a different run (config hash "
            f"{meta.get('config_hash')!r}, expected {chash!r})"
        )
    return tensors, meta


def _load_states(
    paths: Sequence[Path],
    stack: _Stack,
    opt: torch.optim.Optimizer,
    filt: Any,
    chashes: Sequence[str],
) -> int:
    """Load every model's saved state into the stack; returns the step they are at."""
    states = [_read_state(p, h) for p, h in zip(paths, chashes, strict=True)]
    steps = {int(meta["step"]) for _, meta in states}
    if len(steps) != 1:
        raise CheckpointError(
            f"{paths[0].parent}: the stacked runs stopped at different steps "
            f"({sorted(steps)}); resume them one by one"
        )
    for k, (tensors, _) in enumerate(states):
        model_sd = {n[6:]: v for n, v in tensors.items() if n.startswith("model.")}
        stack.load_member(k, model_sd, str(paths[k]))

    def gather(prefix: str) -> dict[str, torch.Tensor]:
        keys = [n for n in states[0][0] if n.startswith(prefix)]
        return {n[len(prefix) :]: _stack_parts([s[n] for s, _ in states]) for n in keys}

    state: dict[int, dict[str, torch.Tensor]] = {}
    for n, v in gather("optim.").items():
        idx, key = n.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = json.loads(states[0][1]["optim_groups"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    dev = stack.params[0].device
    filt.load_state({n: v.to(dev) for n, v in gather("filter.").items()})
    return steps.pop()


def _check_resume_rows(
    path: Path, rows: list[dict[str, float]], start: int, eval_every: int
) -> None:
    """Refuse to resume from step ``start`` when the metrics lack rows evaluated before it:
    the resumed run would report memorisation and grokking from the later rows alone."""
    expected = range(0, start, max(1, eval_every))
    have = {int(r["step"]) for r in rows}
    missing = [t for t in expected if t not in have]
    if not missing:
        return
    from groklab.store import METRICS, METRICS_RECOVERY

    p = path / METRICS
    what = (
        "missing"
        if not p.exists()
        else f"damaged (lacks the rows of {len(missing)} evaluated steps, "
        f"{missing[0]}..{missing[-1]})"
    )
    raise RunDamagedError(
        f"{p}: {what}; cannot resume from the saved state at step {start} without the "
        f"metrics before it; {METRICS_RECOVERY}"
    )


def rebuild_final_checkpoint(run_dir: str | Path) -> Path | None:
    """Write the missing final checkpoint of a completed run from its saved state (the state
    holds the same weights); returns the file written, or ``None`` if nothing was missing.

    Raises:
        CheckpointError: the state is of another run or of another step (cannot rebuild).
    """
    from groklab.store import CKPT_DIR, STATE, checkpoint_name, list_checkpoint_steps

    run_dir = Path(run_dir)
    m = read_manifest(run_dir)
    final = m.get("final_step")
    if m.get("status") != "completed" or not isinstance(final, int):
        return None
    if final in list_checkpoint_steps(run_dir):
        return None
    target = run_dir / CKPT_DIR / checkpoint_name(final)
    state = run_dir / STATE
    if not state.exists():
        raise CheckpointError(
            f"{target}: missing, and {state} is missing too, so it cannot be rebuilt; restore "
            "it from a copy"
        )
    chash = m.get("config_hash")
    tensors, meta = _read_state(state, chash)
    if int(meta.get("step", -1)) != final:
        raise CheckpointError(
            f"{target}: missing, and {state} holds step {meta.get('step')}, not the final step "
            f"{final}, so it cannot be rebuilt; restore it from a copy"
        )
    weights = {n[6:]: v for n, v in tensors.items() if n.startswith("model.")}
    with RunStore.open_existing(run_dir)[0] as store:
        store.write_checkpoint(
            final,
            weights,
            {"config_hash": chash, "groklab_version": meta.get("groklab_version", __version__)},
        )
    return target


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


def _first_step(rows: list[dict[str, float]], key: str, thr: float = 0.99) -> int | None:
    for r in rows:
        v = r.get(key)
        if v is not None and v >= thr:
            return int(r["step"])
    return None


# --------------------------------------------------------------------------- entry points


def run_training(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Train ``config`` into the run directory ``out`` (or continue it with ``resume``).

    Args:
        config: the run's config (ignored on resume: the directory's own config is used).
        out: run directory.
        resume: continue the killed/stopped run in ``out`` from its latest full state.
        progress: show a live progress bar.
        init_state: optional initial weights (e.g. from another run's checkpoint).

    Returns:
        The run directory.
    """
    return train_stack(
        [config],
        [out],
        resume=resume,
        progress=progress,
        init_states=None if init_state is None else [init_state],
    )[0]


def train_stack(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path],
    *,
    resume: bool = False,
    progress: bool = True,
    init_states: Sequence[dict[str, torch.Tensor] | None] | None = None,
) -> list[Path]:
    """Train K runs of one shape as one batched computation (see ``ensemble.train_many``).

    The configs must agree on everything that shapes or schedules the computation; the
    caller checks that (``ensemble.check_stackable``). On resume each directory's own
    config is used and every run must stand at the same step.
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


def _train(
    stores: Sequence[RunStore],
    configs: Sequence[RunConfig],
    *,
    tasks: Sequence[Task | None],
    resume: bool,
    progress: bool,
    init_states: Sequence[dict[str, torch.Tensor] | None],
) -> None:
    config = configs[0]
    tc = config.train
    device = resolve_device(tc.device)
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
    k_ = len(members)
    stack = _Stack(models, device)
    del models
    opt = make_optimizer(stack.params, config.optim)
    filt = make_grad_filter(stack.params, config.optim, stacked=True)
    # optim.fixed_norm holds each model's own total norm; resolved before resume loads weights.
    norm_ctls = []
    if config.optim.fixed_norm is not None:
        with torch.no_grad():
            views = [[p[k] for p in stack.params] for k in range(k_)]
        norm_ctls = [make_norm_constraint(v, config.optim) for v in views]
    task = members[0].task
    data = _Data.of([m.task for m in members], device)
    batches = _Batches([m.task for m in members], data, configs)
    evaluate = _Evaluator(stack, data, task, config)
    loss_dtype = _DTYPES[tc.loss_dtype]
    n_scored = task.n_scored

    start = 0
    state_paths = [m.store.path / "state.safetensors" for m in members]
    if resume and any(p.exists() for p in state_paths):
        start = _load_states(state_paths, stack, opt, filt, [m.chash for m in members])
        for m in members:
            m.rows = [r for r in m.store.read_metrics() if r["step"] < start]
            _check_resume_rows(m.store.path, m.rows, start, m.config.train.eval_every)
    n_params = sum(p[0].numel() for p in stack.params)
    for k, m in enumerate(members):
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
                "resumed_from_step": start if resume else None,
            }
        )
        if k_ > 1:
            m.manifest["stack"] = {
                "size": k_,
                "index": k,
                "runs": [str(o.store.path) for o in members],
            }
        m.store.write_manifest(m.manifest)
        if tc.stop_test_acc is not None:
            for r in m.rows:  # rebuild the early-stop streak of a resumed run from its metrics
                if r["test/acc"] < tc.stop_test_acc:
                    m.above_since = None
                elif m.above_since is None:
                    m.above_since = int(r["step"])

    log_ckpts = _log_checkpoints(tc.steps, tc.checkpoint_every, tc.log_checkpoints)

    def is_ckpt(t: int) -> bool:
        return is_checkpoint_step(t, tc.steps, tc.checkpoint_every, log_ckpts)

    name = config.name if k_ == 1 else f"{config.name} ×{k_}"
    bar = _Progress(progress, tc.steps, start, name)
    t0 = time.perf_counter()

    def finish(m: _Member, status: str, t: int) -> None:
        m.done, m.status, m.final_step = True, status, t
        wall = time.perf_counter() - t0
        done = t - start
        m.store.write_metrics(m.rows)
        m.manifest.update(
            {
                "status": status,
                "finished_at": _now(),
                "final_step": t,
                "wall_seconds": round(wall + m.prev_wall, 3),
                "seconds_per_step": wall / done if done else None,
                "memorisation_step": _first_step(m.rows, "train/acc"),
                "grokking_step": _first_step(m.rows, "test/acc"),
            }
        )
        m.store.write_manifest(m.manifest)

    n_done_seen, active = 0, None  # active: [K] bool mask, once a model has finished
    t = start
    try:
        for t in range(start, tc.steps + 1):
            lr = lr_at(t, config.optim)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches.get(t)
            logits = stack.logits(x, n_scored)  # [K, batch, n_scored, d_vocab_out]
            tok = token_losses(logits, y, kind=tc.loss, dtype=loss_dtype)  # [K, batch, n_scored]
            per_model = tok.flatten(1).mean(1)  # [K]
            last = t == tc.steps
            stopping: set[int] = set()
            if t % tc.eval_every == 0 or last:
                train_tok = None
                if batches.full:
                    with torch.no_grad():
                        train_tok = (tok.detach(), (logits.detach().argmax(-1) == y).to(loss_dtype))
                vals = evaluate(train_tok)
                vals.update(stack.weight_norms())
                keys = list(vals)
                host = torch.stack([vals[key].to(torch.float64) for key in keys]).cpu().tolist()
                shown = []
                for k, m in enumerate(members):
                    if m.done:
                        continue
                    row = {"step": t, "lr": lr, **{key: host[i][k] for i, key in enumerate(keys)}}
                    m.rows.append(row)
                    shown.append(row)
                    tl = row["train/loss"]
                    if not math.isfinite(tl) or tl > tc.diverge_loss:
                        finish(m, "diverged", t)
                        continue
                    if tc.stop_test_acc is not None:
                        if row["test/acc"] >= tc.stop_test_acc:
                            m.above_since = t if m.above_since is None else m.above_since
                            if t - m.above_since >= tc.stop_patience:
                                stopping.add(k)
                        else:
                            m.above_since = None
                bar.update(t, shown)
            elif t % 50 == 0:
                bar.update(t)
            if is_ckpt(t) or last or stopping:
                if t % tc.eval_every != 0 and not last:
                    for k, lv in enumerate(per_model.detach().cpu().tolist()):
                        if not members[k].done and (not math.isfinite(lv) or lv > tc.diverge_loss):
                            finish(members[k], "diverged", t)
                for k, m in enumerate(members):
                    if m.done or not (is_ckpt(t) or last or k in stopping):
                        continue
                    meta = {"config_hash": m.chash, "groklab_version": __version__}
                    m.store.write_checkpoint(t, stack.member_weights(k), meta)
                    tensors, smeta = _state_tensors(stack, k, opt, filt)
                    m.store.write_metrics(m.rows)
                    m.store.write_state(t, tensors, {**meta, **smeta})
                    if last or k in stopping:
                        finish(m, "completed", t)
            n_done = sum(m.done for m in members)
            if last or n_done == k_:
                break
            if n_done != n_done_seen:
                n_done_seen = n_done
                active = torch.tensor([not m.done for m in members], device=device)
            # A model that finished at this step takes no part in its update ...
            loss = per_model.sum() if active is None else torch.where(active, per_model, 0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if filt.active:
                filt.apply()
            opt.step()
            for ctl in norm_ctls:
                ctl.apply()
            if active is not None and not norm_ctls:
                # ... and then leaves the stack, so that it costs nothing after it stopped: the
                # others go on as a smaller stack (weights, optimiser and filter state sliced).
                # (optim.fixed_norm constrains views of the whole stack: that one stays whole.)
                keep = torch.tensor([k for k, m in enumerate(members) if not m.done], device=device)
                members = [members[k] for k in keep.tolist()]
                stack, opt, filt = _select_models(keep, stack, opt, filt, config)
                data = data.select(keep)
                batches = _Batches([m.task for m in members], data, [m.config for m in members])
                evaluate = _Evaluator(stack, data, task, config)
                k_, n_done_seen, active = len(members), 0, None
    except BaseException as e:
        # Ctrl-C is not a failure of the run: it is recorded as interrupted (resumable).
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
        bar.close()
        raise
    bar.close()
    for m in members:
        if not m.done:  # diverged at a checkpoint-free step, or the loop ended otherwise
            finish(m, "completed", t)
