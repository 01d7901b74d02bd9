"""The full training state of a run (``state.safetensors``): writing, loading for resume,
the checks before resuming, and rebuilding a missing final checkpoint from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from groklab._version import __version__
from groklab.errors import CheckpointError, RunDamagedError
from groklab.store import RunStore, load_checkpoint, read_manifest
from groklab.train.stack import _member_slice, _Stack, _stack_parts


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
