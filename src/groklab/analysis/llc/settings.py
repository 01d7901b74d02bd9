"""The sampler's settings: :class:`LLCSettings`, their validation and cache key.

One frozen :class:`LLCSettings` names everything that fixes an LLC estimate (step size,
localisation, inverse temperature, chains, draws, burn-in, minibatch, seed, divergence bound)
and the γ-sensitivity check that accompanies it. Numbers are normalised to floats so that
settings from TOML and from the CLI compare and hash alike; :meth:`LLCSettings.key` is the
short hash that names a cache, made of the estimate's settings only. :func:`resolve_nbeta`
turns the ``nbeta`` spec into a number for a given training set and batch size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from groklab.errors import ConfigError

_NBETA_SPECS = ("n/log n", "m/log m")


_CHECK_FIELDS = ("gamma_check", "gamma_check_chains")


@dataclass(frozen=True)
class LLCSettings:
    """Settings of one LLC estimate.

    Attributes:
        epsilon: SGLD step size ``eps`` (the noise has variance ``eps``).
        gamma: localisation strength ``gamma`` (0 = none).
        nbeta: inverse temperature: a number, ``"n/log n"`` (theory; ``n`` = training rows)
            or ``"m/log m"`` (devinterp's default; ``m`` = batch size).
        chains: independent chains (run as one batched computation).
        draws: draws per chain that enter the estimate.
        burnin: SGLD steps per chain before the first draw (discarded).
        batch_size: minibatch rows per step; ``None`` = full batch.
        seed: seed of the local generator (noise and minibatches).
        max_loss: a chain whose loss exceeds this is diverged; ``None`` = automatic
            (:func:`default_max_loss` for runs; no loss bound for generic losses, where only
            non-finite losses and impossible estimates above ``d/2`` count).
        gamma_check: the γ-sensitivity diagnostic (:class:`GammaCheck`): every estimate is
            repeated at ``gamma / k`` and ``gamma * k`` for this factor ``k``; ``None`` or 0 =
            off (it is also skipped at ``gamma = 0``).
        gamma_check_chains: chains of each side estimate (same burn-in and draws);
            ``None`` = half the chains (at least 1), so the check doubles the cost.

    The diagnostic's fields do not enter :meth:`key`: they do not change the estimate itself
    (its chains and seed are the same with or without the check).
    """

    epsilon: float = 3e-4
    gamma: float = 300.0
    nbeta: float | str = "n/log n"
    chains: int = 4
    draws: int = 200
    burnin: int = 100
    batch_size: int | None = 512
    seed: int = 0
    max_loss: float | None = None
    gamma_check: float | None = 3.0
    gamma_check_chains: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"llc.{name}={getattr(self, name)!r} is not allowed; {allowed}")

        if self.gamma_check == 0 and not isinstance(self.gamma_check, bool):
            object.__setattr__(self, "gamma_check", None)  # 0 = off (TOML has no None)
        # Numbers as floats, so that gamma = 1000 (TOML) and 1000.0 (CLI) are the same settings
        # and share one cache key.
        for name in ("epsilon", "gamma", "nbeta", "max_loss", "gamma_check"):
            v = getattr(self, name)
            if (v is None and name in ("max_loss", "gamma_check")) or (
                isinstance(v, str) and name == "nbeta"
            ):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(name, "use a number")
            object.__setattr__(self, name, float(v))
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise bad("epsilon", "use a positive step size such as 1e-4")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise bad("gamma", "use a localisation >= 0 such as 100")
        if isinstance(self.nbeta, str):
            if self.nbeta not in _NBETA_SPECS:
                raise bad("nbeta", f"use a positive number or one of {', '.join(_NBETA_SPECS)}")
        elif not (math.isfinite(self.nbeta) and self.nbeta > 0):
            raise bad("nbeta", f"use a positive number or one of {', '.join(_NBETA_SPECS)}")
        for name, lo in (("chains", 1), ("draws", 2), ("burnin", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise bad(name, f"use an integer >= {lo}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise bad("batch_size", "use a positive integer, or None for full batch")
        if self.max_loss is not None and not self.max_loss > 0:
            raise bad("max_loss", "use a positive bound, or None for automatic")
        if self.gamma_check is not None and not (
            math.isfinite(self.gamma_check) and self.gamma_check > 1
        ):
            raise bad("gamma_check", "use a factor > 1 such as 3, or 0/None to switch it off")
        c = self.gamma_check_chains
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise bad("gamma_check_chains", "use an integer >= 1, or None for half the chains")

    @property
    def check_chains(self) -> int:
        """Chains of each side estimate of the γ check."""
        return self.gamma_check_chains or max(1, self.chains // 2)

    @property
    def checks_gamma(self) -> bool:
        """Whether estimates with these settings carry the γ check."""
        return self.gamma_check is not None and self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LLCSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"llc settings: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(known)}"
            )
        return cls(**dict(d))

    def key(self) -> str:
        """Short hash naming these settings in cache files (the estimate's settings only:
        the γ check's are recorded per cached row, so caches made before it stay valid)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _CHECK_FIELDS}
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def resolve_nbeta(spec: float | str, *, n: int, batch_size: int | None) -> float:
    """The inverse temperature ``nbeta`` for ``n`` training rows and minibatches of ``batch_size``."""
    if not isinstance(spec, str):
        return float(spec)
    size = n if spec == "n/log n" or batch_size is None else min(batch_size, n)
    if size < 2:
        raise ConfigError(f"llc.nbeta={spec!r} needs at least 2 rows (got {size}); give a number")
    return size / math.log(size)
