"""Training: the loop, optimisers and gradient filters, losses."""

from groklab.train.loop import checkpoint_schedule, resolve_device, run_training
from groklab.train.losses import token_losses
from groklab.train.optim import GradFilter, lr_at, make_grad_filter, make_optimizer

__all__ = [
    "GradFilter",
    "checkpoint_schedule",
    "lr_at",
    "make_grad_filter",
    "make_optimizer",
    "resolve_device",
    "run_training",
    "token_losses",
]
