"""K models of one config held as one stack of leaf tensors with a leading model axis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from groklab.config import RunConfig
from groklab.errors import CheckpointError
from groklab.train.optim import make_grad_filter, make_optimizer


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
