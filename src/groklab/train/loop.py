"""The one training loop, for every task and model.

Order of work at step ``t`` (``t`` updates done so far):

1. forward on the step's batch with the weights after ``t`` updates;
2. if ``t`` is an evaluation step: score every named subset with those same weights and
   append one metrics row (train metrics come from this forward in full-batch mode);
3. if ``t`` is a checkpoint step: save the weights, and the full training state (optimiser,
   filters) from which ``--resume`` continues at exactly this point;
4. unless ``t`` is the last step: backward, gradient filters, optimiser update.

Nothing else touches the host between evaluation steps: no ``.item()``, no per-step I/O. So a
resumed run replays the same arithmetic and ends bit-identical on CPU.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from groklab import __version__
from groklab.config import RunConfig, config_hash
from groklab.errors import CheckpointError
from groklab.models import build_model
from groklab.store import RunStore, load_checkpoint, read_manifest
from groklab.tasks import Task, build_task
from groklab.train.losses import token_losses
from groklab.train.norm import make_norm_constraint
from groklab.train.optim import lr_at, make_grad_filter, make_optimizer

__all__ = ["checkpoint_schedule", "resolve_device", "run_training"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def checkpoint_schedule(steps: int, every: int, n_log: int) -> set[int]:
    """Steps to checkpoint: 0, every ``every``, the last, plus ``n_log`` log-spaced early ones."""
    sched = set(range(0, steps + 1, every)) | {steps}
    if n_log > 0 and every > 1:
        hi = math.log(every)
        for i in range(n_log):
            sched.add(round(math.exp(hi * (i + 1) / (n_log + 1))))
    return {s for s in sched if 0 <= s <= steps}


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


@dataclass
class _Data:
    """Task tensors on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    subsets: dict[str, tuple[str, torch.Tensor | None, int | None]]

    @classmethod
    def of(cls, task: Task, device: torch.device) -> _Data:
        subsets = {
            name: (s.split, None if s.rows is None else s.rows.to(device), s.position)
            for name, s in task.subsets.items()
        }
        return cls(
            task.train_x.to(device),
            task.train_y.to(device),
            task.test_x.to(device),
            task.test_y.to(device),
            subsets,
        )


class _Batches:
    """Stateless batch schedule: the batch of step t depends only on (seed, t)."""

    def __init__(self, task: Task, data: _Data, cfg: RunConfig) -> None:
        self.task, self.data = task, data
        self.seed = cfg.train.seed
        n = task.n_train
        b = cfg.train.batch_size
        self.full = task.sampler is None and (b is None or b >= n)
        self.b = b or n
        self.per_epoch = max(n // self.b, 1)
        self._epoch, self._perm = -1, None

    def _gen(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + salt) % (2**63))

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.data
        if self.full:
            return d.train_x, d.train_y
        if self.task.sampler is not None:
            x, y = self.task.sampler(self._gen(t), self.b)
            return x.to(d.train_x.device), y.to(d.train_x.device)
        epoch, i = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            perm = torch.randperm(self.task.n_train, generator=self._gen(epoch))
            self._perm = perm.to(d.train_x.device)
        idx = self._perm[i * self.b : (i + 1) * self.b]
        return d.train_x[idx], d.train_y[idx]


class _Evaluator:
    """Scores train, test and every named subset; one host transfer per evaluation."""

    def __init__(self, model: torch.nn.Module, data: _Data, task: Task, cfg: RunConfig) -> None:
        self.model, self.data, self.task = model, data, task
        self.kind, self.dtype = cfg.train.loss, _DTYPES[cfg.train.loss_dtype]
        self.chunk = 16384

    def _per_token(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, correct = [], []
        for i in range(0, x.shape[0], self.chunk):
            logits = self.model(x[i : i + self.chunk], n_scored=self.task.n_scored)
            yy = y[i : i + self.chunk]
            losses.append(token_losses(logits, yy, kind=self.kind, dtype=self.dtype))
            correct.append((logits.argmax(-1) == yy).to(self.dtype))
        if not losses:
            empty = torch.empty(0, self.task.n_scored, dtype=self.dtype, device=x.device)
            return empty, empty
        return torch.cat(losses), torch.cat(correct)

    @torch.no_grad()
    def __call__(
        self, train_tok: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        d = self.data
        per_split = {
            "train": train_tok if train_tok is not None else self._per_token(d.train_x, d.train_y),
            "test": self._per_token(d.test_x, d.test_y),
        }
        out: dict[str, torch.Tensor] = {}
        nan = torch.tensor(float("nan"), dtype=self.dtype, device=d.train_x.device)
        for split, (loss, corr) in per_split.items():
            out[f"{split}/loss"] = loss.mean() if loss.numel() else nan
            out[f"{split}/acc"] = corr.mean() if corr.numel() else nan
        for name, (split, rows, pos) in d.subsets.items():
            loss, corr = per_split[split]
            if rows is not None:
                loss, corr = loss[rows], corr[rows]
            if pos is not None:
                loss, corr = loss[:, pos], corr[:, pos]
            out[f"{name}/loss"] = loss.mean() if loss.numel() else nan
            out[f"{name}/acc"] = corr.mean() if corr.numel() else nan
        return out


def _weight_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    norms = {f"wnorm/{n}": p.detach().norm() for n, p in model.named_parameters()}
    sq = torch.stack([v.to(torch.float64) ** 2 for v in norms.values()]).sum()
    norms["wnorm/total"] = sq.sqrt()
    return norms


def _state_tensors(
    model: torch.nn.Module, opt: torch.optim.Optimizer, filt: Any
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val
    for key, val in filt.state.items():
        tensors[f"filter.{key}"] = val
    meta = {"optim_groups": json.dumps(sd["param_groups"])}
    return tensors, meta


def _load_state(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, filt: Any, chash: str
) -> int:
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "state" or meta.get("config_hash") != chash:
        raise CheckpointError(
            f"{path}: training state of a different run (config hash "
            f"{meta.get('config_hash')!r}, expected {chash!r})"
        )
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: does not match this run's model ({first})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    groups = json.loads(meta["optim_groups"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    dev = next(model.parameters()).device
    filt.load_state(
        {k[7:]: v.to(dev) for k, v in tensors.items() if k.startswith("filter.")}
    )
    return int(meta["step"])


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

    def update(self, step: int, row: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if row is not None:
            m = (
                f"train {row['train/loss']:.3g} ({row['train/acc']:.1%})  "
                f"test {row['test/loss']:.3g} ({row['test/acc']:.1%})"
            )
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
    out = Path(out)
    if resume:
        store, config = RunStore.open_existing(out)
        task = None
    else:
        # Build the task first: a config the task rejects must not leave a directory behind.
        task = build_task(config.data)
        store = RunStore.create(out, config)
    try:
        return _train(
            store, config, task=task, resume=resume, progress=progress, init_state=init_state
        )
    finally:
        store.close()


def _train(
    store: RunStore,
    config: RunConfig,
    *,
    task: Task | None,
    resume: bool,
    progress: bool,
    init_state: dict[str, torch.Tensor] | None,
) -> Path:
    tc = config.train
    device = resolve_device(tc.device)
    chash = config_hash(config)
    task = task if task is not None else build_task(config.data)
    model = build_model(config.model, task, seed=tc.seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.to(device)
    params = list(model.parameters())
    opt = make_optimizer(params, config.optim)
    filt = make_grad_filter(params, config.optim)
    norm_ctl = make_norm_constraint(params, config.optim)  # optim.fixed_norm; before resume
    data = _Data.of(task, device)
    batches = _Batches(task, data, config)
    evaluate = _Evaluator(model, data, task, config)
    loss_dtype = _DTYPES[tc.loss_dtype]
    n_scored = task.n_scored

    manifest = read_manifest(store.path) if resume else {}
    prev_wall = float(manifest.get("wall_seconds") or 0.0)
    start, rows = 0, []
    if resume and (store.path / "state.safetensors").exists():
        start = _load_state(store.path / "state.safetensors", model, opt, filt, chash)
        rows = [r for r in store.read_metrics() if r["step"] < start]
    manifest.update(
        {
            "format": "groklab-run-1",
            "groklab_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
            ),
            "torch_threads": torch.get_num_threads(),
            "seed": tc.seed,
            "split_seed": config.data.split_seed,
            "split_hash": task.split_hash,
            "config_hash": chash,
            "git_rev": _git_rev(),
            "n_params": sum(p.numel() for p in params),
            "n_train": task.n_train,
            "n_test": task.n_test,
            "d_vocab": task.d_vocab,
            "d_vocab_out": task.d_vocab_out,
            "n_ctx": task.n_ctx,
            "status": "running",
            "created_at": manifest.get("created_at", _now()),
            "started_at": _now(),
            "resumed_from_step": start if resume else None,
        }
    )
    store.write_manifest(manifest)

    ckpt_steps = checkpoint_schedule(tc.steps, tc.checkpoint_every, tc.log_checkpoints)
    meta = {"config_hash": chash, "groklab_version": __version__}
    bar = _Progress(progress, tc.steps, start, config.name)
    status, t = "completed", start
    above_since: int | None = None
    if tc.stop_test_acc is not None:
        for r in rows:  # rebuild the early-stop streak of a resumed run from its metrics
            if r["test/acc"] < tc.stop_test_acc:
                above_since = None
            elif above_since is None:
                above_since = int(r["step"])
    t0 = time.perf_counter()
    try:
        for t in range(start, tc.steps + 1):
            lr = lr_at(t, config.optim)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches.get(t)
            logits = model(x, n_scored=n_scored)
            tok = token_losses(logits, y, kind=tc.loss, dtype=loss_dtype)
            loss = tok.mean()
            last = t == tc.steps
            stop = False
            if t % tc.eval_every == 0 or last:
                train_tok = None
                if batches.full:
                    with torch.no_grad():
                        train_tok = (tok.detach(), (logits.detach().argmax(-1) == y).to(loss_dtype))
                vals = evaluate(train_tok)
                vals.update(_weight_norms(model))
                keys = list(vals)
                host = torch.stack([vals[k].to(torch.float64) for k in keys]).cpu().tolist()
                row = {"step": t, "lr": lr, **dict(zip(keys, host, strict=True))}
                rows.append(row)
                bar.update(t, row)
                tl = row["train/loss"]
                if not math.isfinite(tl) or tl > tc.diverge_loss:
                    status = "diverged"
                    break
                if tc.stop_test_acc is not None:
                    if row["test/acc"] >= tc.stop_test_acc:
                        above_since = t if above_since is None else above_since
                        stop = t - above_since >= tc.stop_patience
                    else:
                        above_since = None
            elif t % 50 == 0:
                bar.update(t)
            if t in ckpt_steps or last or stop:
                if t % tc.eval_every != 0 and not last:
                    lv = float(loss.detach())
                    if not math.isfinite(lv) or lv > tc.diverge_loss:
                        status = "diverged"
                        break
                store.write_checkpoint(t, model.state_dict(), meta)
                tensors, smeta = _state_tensors(model, opt, filt)
                store.write_metrics(rows)
                store.write_state(t, tensors, {**meta, **smeta})
            if last or stop:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if filt.active:
                filt.apply()
            opt.step()
            if norm_ctl is not None:
                norm_ctl.apply()
    except BaseException as e:
        manifest.update({"status": "failed", "error": f"{type(e).__name__}: {e}"})
        store.write_metrics(rows)
        store.write_manifest(manifest)
        bar.close()
        raise
    bar.close()
    wall = time.perf_counter() - t0
    done = t - start
    store.write_metrics(rows)
    manifest.update(
        {
            "status": status,
            "finished_at": _now(),
            "final_step": t,
            "wall_seconds": round(wall + prev_wall, 3),
            "seconds_per_step": wall / done if done else None,
            "memorisation_step": _first_step(rows, "train/acc"),
            "grokking_step": _first_step(rows, "test/acc"),
        }
    )
    store.write_manifest(manifest)
    return store.path
