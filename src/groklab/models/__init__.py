"""Models: pure ``nn.Module``s that know nothing about training."""

from __future__ import annotations

from groklab.config import ModelConfig
from groklab.errors import ConfigError
from groklab.models.hooks import HookedModule, HookPoint
from groklab.models.mlp import MLP
from groklab.models.transformer import Transformer
from groklab.tasks.base import Task

__all__ = ["MLP", "HookPoint", "HookedModule", "Transformer", "build_model"]


def build_model(cfg: ModelConfig, task: Task, *, seed: int = 0) -> HookedModule:
    """The model ``cfg`` describes, sized for ``task``, initialised from ``seed`` (on CPU)."""
    # Dense (float feature) inputs fit only the dense MLP, and it only fits them.
    dense_task = task.info.get("input") == "dense"
    dense_model = cfg.arch == "mlp" and cfg.mlp_input == "dense"
    if dense_task != dense_model:
        want = "arch=mlp with mlp_input=dense" if dense_task else "a token model"
        got = f"arch={cfg.arch}" + (f", mlp_input={cfg.mlp_input}" if cfg.arch == "mlp" else "")
        raise ConfigError(f"model: task {task.name!r} needs {want}; got {got}")
    cls = Transformer if cfg.arch == "transformer" else MLP
    return cls(cfg, d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx, seed=seed)
