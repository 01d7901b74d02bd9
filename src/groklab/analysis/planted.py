"""Planted circuits: networks built by hand to compute the Fourier clock, saved as runs.

A planted run is a known answer for ``groklab analyze``: its weights are set, not trained, so
that the logits are ``Σ_k A_k cos(w_k(s(a, b) − c))`` for chosen key frequencies ``k`` and
amplitudes ``A_k``, where ``s`` is the answer *index* (``a + b``, ``a − b``, or for ``mul`` /
``div`` the discrete logarithms ``log a ± log b`` mod ``p − 1``, as in
:func:`groklab.analysis.fourier.operation_grid`). Two architectures, in groklab's own parameter
layout:

* ``transformer`` — one block, no LayerNorm. The embedding writes ``cos/sin(w_k x)`` of each
  residue's index ``x``; head 0 attends from ``=`` only to ``a`` and copies those waves into an
  ``a`` subspace, head 1 the same for ``b`` (W_Q reads a marker of the ``=`` token, W_K a
  one-hot of the key's position; the pattern is one-hot up to ``e^-40``). The MLP multiplies
  the waves, and ``W_U`` reads ``cos/sin(w_k s)`` back out as ``A_k cos(w_k(s − c))``.
* ``mlp`` — two linear layers on concatenated one-hot inputs (``mlp_input = "concat"``): the
  embedding of ``a``'s block gives each neuron ``cos(w x_a + φ₁)``, ``b``'s block
  ``cos(± w x_b + φ₂)``, then ``W_U``.

**The product.** Frequency ``k`` gets ``M²`` neurons, one per phase pair ``(φ₁, φ₂)`` on the
grid ``2π·(0..M−1)/M``; neuron ``(φ₁, φ₂)`` computes ``g(x + φ₁, y + φ₂)`` with
``g(t₁, t₂) = ReLU(cos t₁ + cos t₂ + β)`` (``x = w_k i``, ``y = ±w_k j``) and writes
``cos(φ₁ + φ₂ + w_k c)`` to the logit of class ``c``. Summed over the phase grid, every term
``ĝ(u, v) e^{i(u t₁ + v t₂)}`` of ``g``'s Fourier series cancels unless ``u ≡ v ≡ 1 (mod M)``,
so the logits are ``M² ĝ(1, 1) cos(x + y − w_k c)`` — the planted term — plus aliases
``(u, v) = (1 + aM, 1 + bM)`` whose coefficients fall off like ``1/M²``: with the defaults
(``M = 16``, ``β = 0.5``) their power is about 1e-6 of their frequency's. Each neuron's
activation is a function of frequency ``k`` alone (≥ 0.96 of its centred power in the 8 Fourier
terms of ``k``), so the neuron clusters are known too; they are recorded in ``planted.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from groklab.analysis.fourier import primitive_root
from groklab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, config_hash
from groklab.errors import ConfigError

__all__ = ["PLANTED_FILE", "PlantedCircuit", "PlantedRun", "planted_weights", "write_planted_run"]

#: The file in a planted run directory that records what was planted.
PLANTED_FILE = "planted.json"

_OPS = ("add", "sub", "mul", "div")
_ATTN_SCORE = 40.0  # score of the attended key; the others score 0 (weight e^-40 each)
_ZERO_LOGIT = 20.0  # mul/div: logit of the answer 0 per zero operand (every other logit is 0)


@dataclass(frozen=True)
class PlantedCircuit:
    """What to plant.

    Attributes:
        op: ``add``, ``sub``, ``mul`` or ``div``.
        p: the modulus (prime for mul/div).
        freqs: the key frequencies, each in ``1 .. ⌊(n−1)/2⌋`` (``n = p``, or ``p − 1``).
        amplitudes: ``A_k`` of each key frequency (logit units, > 0).
        arch: ``transformer`` or ``mlp``.
        phases: ``M``, phases per operand (``M²`` neurons per frequency).
        bias: ``β``, the MLP pre-activation bias.
        generator: generator of ``Z_p*`` for mul/div (default: the smallest).
    """

    op: str = "add"
    p: int = 59
    freqs: tuple[int, ...] = (4, 11, 17, 23, 26)
    amplitudes: tuple[float, ...] = (30.0, 10.0, 4.0, 2.0, 1.0)
    arch: str = "transformer"
    phases: int = 16
    bias: float = 0.5
    generator: int | None = None

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError(f"planted op={self.op!r} is not allowed; allowed: {', '.join(_OPS)}")
        if self.arch not in ("transformer", "mlp"):
            raise ConfigError(
                f"planted arch={self.arch!r} is not allowed; allowed: transformer, mlp"
            )
        if self.op in ("mul", "div"):
            primitive_root(self.p)  # raises for a non-prime p
        elif self.p < 3:
            raise ConfigError(f"planted p={self.p} is not allowed; must be >= 3")
        n = self.n
        top = (n - 1) // 2
        if not 1 <= len(self.freqs) <= 10 or len(set(self.freqs)) != len(self.freqs):
            raise ConfigError(f"planted freqs={self.freqs} is not allowed; give 1..10 distinct")
        bad = [k for k in self.freqs if not 1 <= k <= top]
        if bad:
            raise ConfigError(f"planted frequency {bad[0]} is not allowed; allowed: 1..{top}")
        if len(self.amplitudes) != len(self.freqs) or min(self.amplitudes) <= 0:
            raise ConfigError("planted amplitudes: give one positive amplitude per frequency")
        if self.phases < 4:
            raise ConfigError(f"planted phases={self.phases} is not allowed; must be >= 4")
        if not 0 <= self.bias < 2:
            raise ConfigError(f"planted bias={self.bias} is not allowed; must be in [0, 2)")

    @property
    def n(self) -> int:
        """The group of the operand indices: ``p``, or ``p − 1`` by discrete log."""
        return self.p - 1 if self.op in ("mul", "div") else self.p

    @property
    def zero_neuron(self) -> bool:
        """Whether the MLP has one extra neuron that detects a zero operand (mul/div)."""
        return self.arch == "mlp" and self.op in ("mul", "div")

    @property
    def d_mlp(self) -> int:
        return len(self.freqs) * self.phases**2 + int(self.zero_neuron)

    @property
    def neuron_freq(self) -> list[int]:
        """The planted frequency of each MLP neuron (0: the zero detector, dead on the grid)."""
        return [k for k in self.freqs for _ in range(self.phases**2)] + [0] * self.zero_neuron

    def index_of(self) -> torch.Tensor:
        """``[p]`` the index of each residue (``-1`` for 0 under mul/div: no logarithm)."""
        if self.op in ("add", "sub"):
            return torch.arange(self.p)
        g = primitive_root(self.p) if self.generator is None else int(self.generator)
        out = torch.full((self.p,), -1, dtype=torch.long)
        for e in range(self.p - 1):
            out[pow(g, e, self.p)] = e
        if bool((out[1:] < 0).any()):
            raise ConfigError(f"generator={g} does not generate Z_{self.p}*")
        return out


def _waves(c: PlantedCircuit) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin [p, K]`` of ``w_k · index(residue)`` (zero for a residue without an index)."""
    idx = c.index_of()
    w = torch.tensor([2 * math.pi * k / c.n for k in c.freqs], dtype=torch.float64)
    ang = idx.double()[:, None] * w[None, :]
    has = (idx >= 0).double()[:, None]
    return torch.cos(ang) * has, torch.sin(ang) * has


def _neurons(c: PlantedCircuit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per neuron: its frequency's position ``q``, phases ``φ₁, φ₂`` and output scale."""
    m = c.phases
    ph = 2 * math.pi * torch.arange(m, dtype=torch.float64) / m
    p1, p2 = (t.reshape(-1) for t in torch.meshgrid(ph, ph, indexing="ij"))
    # The logit amplitude of one frequency per unit output weight: the phase-grid sum at
    # x = y = 0, class 0 (aliases included, so the planted amplitude is exact there).
    unit = float(((torch.cos(p1) + torch.cos(p2) + c.bias).relu() * torch.cos(p1 + p2)).sum())
    k_ = len(c.freqs)
    q = torch.arange(k_).repeat_interleave(m * m)
    scale = torch.tensor(c.amplitudes, dtype=torch.float64)[q] / unit
    return q, p1.repeat(k_), p2.repeat(k_), scale


def planted_weights(c: PlantedCircuit) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The config (model part) and the weights of the planted network (float32).

    The returned config is a single-operation modular run of ``c.op`` mod ``c.p``.
    """
    q, p1, p2, scale = _neurons(c)
    sign_b = -1.0 if c.op in ("sub", "div") else 1.0
    cos_t, sin_t = _waves(c)  # [p, K]
    k_, p, d_mlp = len(c.freqs), c.p, c.d_mlp
    n_wave = len(q)  # the wave neurons; an MLP for mul/div has the zero detector after them
    d_vocab = p + 1  # residues and '='
    idx = c.index_of()
    has = (idx >= 0).double()
    # Class c reads cos/sin(w_k index(c)); classes without an index (0 under mul/div, '=')
    # get a zero logit.
    read = torch.zeros(2 * k_, d_vocab, dtype=torch.float64)
    read[0::2, :p], read[1::2, :p] = cos_t.T * has, sin_t.T * has
    # Neuron n writes cos(φ₁ + φ₂), −sin(φ₁ + φ₂) of its frequency, so that its logit weight is
    # cos(φ₁ + φ₂) cos(w c) − sin(φ₁ + φ₂) sin(w c) = cos(φ₁ + φ₂ + w c).
    out = torch.zeros(d_mlp, 2 * k_, dtype=torch.float64)
    rows = torch.arange(n_wave)
    out[rows, 2 * q] = torch.cos(p1 + p2) * scale
    out[rows, 2 * q + 1] = -torch.sin(p1 + p2) * scale
    # Pre-activation cos(x + φ₁) + cos(σy + φ₂) = cos φ₁ cos x − sin φ₁ sin x
    #                                           + cos φ₂ cos y − σ sin φ₂ sin y.
    read_a = torch.zeros(2 * k_, d_mlp, dtype=torch.float64)
    read_b = torch.zeros(2 * k_, d_mlp, dtype=torch.float64)
    read_a[2 * q, rows], read_a[2 * q + 1, rows] = torch.cos(p1), -torch.sin(p1)
    read_b[2 * q, rows], read_b[2 * q + 1, rows] = torch.cos(p2), -sign_b * torch.sin(p2)
    tok = torch.zeros(p, 2 * k_, dtype=torch.float64)  # [residue, (cos, sin) per frequency]
    tok[:, 0::2], tok[:, 1::2] = cos_t, sin_t

    data = DataConfig(p=p, operations=(c.op,))
    if c.arch == "mlp":
        model = ModelConfig(arch="mlp", n_layers=2, d_mlp=d_mlp, mlp_input="concat")
        w_e = torch.zeros(3 * d_vocab, d_mlp, dtype=torch.float64)  # blocks: a, b, '='
        w_e[:p] = tok @ read_a
        w_e[d_vocab : d_vocab + p] = tok @ read_b
        b = torch.full((d_mlp,), c.bias, dtype=torch.float64)
        w_u = out @ read
        if c.zero_neuron:
            # a · 0 = 0 has no logarithm: one neuron counts zero operands and votes for 0.
            # With a zero operand every wave logit is exactly 0 (its neurons' activation is
            # constant in φ₁ or φ₂, and Σ_φ cos(φ + θ) = 0 over the phase grid).
            w_e[0, -1] = w_e[d_vocab, -1] = 1.0
            b[-1] = 0.0
            w_u[-1, 0] = _ZERO_LOGIT
        weights = {
            "embed.W_E": w_e,
            "layers.0.b": b,
            "unembed.W_U": w_u,
            "unembed.b_U": torch.zeros(d_vocab, dtype=torch.float64),
        }
    else:
        weights = _transformer(c, tok, read_a, read_b, out, read)
        model = ModelConfig(d_model=128, n_heads=4, d_head=32, d_mlp=d_mlp)
    cfg = RunConfig(name=f"planted-{c.op}-{c.arch}", data=data, model=model)
    return cfg, {k: v.float().contiguous() for k, v in weights.items()}


def _transformer(
    c: PlantedCircuit,
    tok: torch.Tensor,
    read_a: torch.Tensor,
    read_b: torch.Tensor,
    out: torch.Tensor,
    read: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One-block transformer weights (d_model 128, 4 heads of 32; heads 2, 3 unused)."""
    k2, p = 2 * len(c.freqs), c.p
    d, h, e = 128, 4, 32
    # Residual layout: token waves | a waves | b waves | output waves | position one-hot | '=',
    # then for mul/div a marker of the token 0 and the count of zero operands (read as class 0).
    tok_s, a_s, b_s, o_s = (
        slice(0, k2),
        slice(k2, 2 * k2),
        slice(2 * k2, 3 * k2),
        slice(3 * k2, 4 * k2),
    )
    pos0, eq, zero_tok, zero_count = 4 * k2, 4 * k2 + 3, 4 * k2 + 4, 4 * k2 + 5
    z = {
        "embed.W_E": torch.zeros(p + 1, d),
        "pos_embed.W_pos": torch.zeros(3, d),
        "blocks.0.attn.W_Q": torch.zeros(h, d, e),
        "blocks.0.attn.W_K": torch.zeros(h, d, e),
        "blocks.0.attn.W_V": torch.zeros(h, d, e),
        "blocks.0.attn.W_O": torch.zeros(h, e, d),
        "blocks.0.mlp.W_in": torch.zeros(d, c.d_mlp),
        "blocks.0.mlp.b_in": torch.full((c.d_mlp,), c.bias),
        "blocks.0.mlp.W_out": torch.zeros(c.d_mlp, d),
        "blocks.0.mlp.b_out": torch.zeros(d),
        "unembed.W_U": torch.zeros(d, p + 1),
    }
    w = {k: v.double() for k, v in z.items()}
    w["embed.W_E"][:p, tok_s] = tok
    w["embed.W_E"][p, eq] = 1.0
    w["pos_embed.W_pos"][torch.arange(3), pos0 + torch.arange(3)] = 1.0
    qk = math.sqrt(_ATTN_SCORE * math.sqrt(e))  # q·k / √d_head = _ATTN_SCORE
    eye = torch.eye(k2, dtype=torch.float64)
    for head, (pos, dest) in enumerate(((0, a_s), (1, b_s))):
        w["blocks.0.attn.W_Q"][head, eq, 0] = qk
        w["blocks.0.attn.W_K"][head, pos0 + pos, 0] = qk
        w["blocks.0.attn.W_V"][head, tok_s, :k2] = eye
        w["blocks.0.attn.W_O"][head, :k2, dest] = eye
        w["blocks.0.attn.W_V"][head, zero_tok, k2] = 1.0
        w["blocks.0.attn.W_O"][head, k2, zero_count] = 1.0
    if c.op in ("mul", "div"):
        w["embed.W_E"][0, zero_tok] = 1.0
        w["unembed.W_U"][zero_count, 0] = _ZERO_LOGIT
    w["blocks.0.mlp.W_in"][a_s] = read_a
    w["blocks.0.mlp.W_in"][b_s] = read_b
    w["blocks.0.mlp.W_out"][:, o_s] = out
    w["unembed.W_U"][o_s] = read
    return w


@dataclass(frozen=True)
class PlantedRun:
    """What :func:`write_planted_run` wrote.

    Attributes:
        path: the run directory.
        circuit: what was planted.
        config: the run's config.
        steps: the checkpoint steps (random initialisation at 0, the planted circuit last).
    """

    path: Path
    circuit: PlantedCircuit
    config: RunConfig
    steps: list[int]


def _split_metrics(model: Any, task: Any, step: int) -> dict[str, float]:
    row: dict[str, float] = {"step": step}
    with torch.no_grad():
        for split, x, y in (
            ("train", task.train_x, task.train_y),
            ("test", task.test_x, task.test_y),
        ):
            logits = model(x, n_scored=1)[:, -1].double()
            row[f"{split}/loss"] = F.cross_entropy(logits, y[:, -1]).item()
            row[f"{split}/acc"] = (logits.argmax(1) == y[:, -1]).double().mean().item()
    return row


def write_planted_run(
    out: str | Path,
    circuit: PlantedCircuit | None = None,
    *,
    train_fraction: float = 0.3,
    step: int = 1000,
    seed: int = 0,
) -> PlantedRun:
    """Write a run directory whose final checkpoint is the planted circuit.

    Checkpoint 0 holds the model's ordinary random initialisation (``seed``), checkpoint
    ``step`` the planted weights; ``metrics.parquet`` has the train/test loss and accuracy of
    both on the task's split (``train_fraction``), and ``planted.json`` records the circuit
    and each neuron's planted frequency. ``groklab analyze`` and :func:`groklab.run.load_run`
    open it like any other run.

    Raises:
        ConfigError: a bad circuit or option. RunExistsError: ``out`` holds something else.
    """
    from groklab._version import __version__
    from groklab.models import build_model
    from groklab.store import RunStore, atomic_write_text
    from groklab.tasks import build_task

    circuit = circuit or PlantedCircuit()
    if step < 1:
        raise ConfigError(f"step={step} is not allowed; must be >= 1")
    base, planted = planted_weights(circuit)
    cfg = RunConfig(
        name=base.name,
        data=DataConfig(p=circuit.p, operations=(circuit.op,), train_fraction=train_fraction),
        model=base.model,
        train=TrainConfig(
            steps=step, eval_every=step, checkpoint_every=step, seed=seed, device="cpu"
        ),
    )
    task = build_task(cfg.data)
    model = build_model(cfg.model, task, seed=seed).eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = [_split_metrics(model, task, 0)]
    model.load_state_dict(planted, strict=True)
    rows.append(_split_metrics(model, task, step))

    chash = config_hash(cfg)
    info = asdict(circuit) | {"n": circuit.n, "neuron_freq": circuit.neuron_freq}
    store = RunStore.create(out, cfg)
    try:
        meta = {"config_hash": chash, "groklab_version": __version__, "planted": "1"}
        store.write_checkpoint(0, init, meta)
        store.write_checkpoint(step, planted, meta)
        store.write_metrics(rows)
        atomic_write_text(store.path / PLANTED_FILE, json.dumps(info, indent=1))
        store.write_manifest(
            {
                "format": "groklab-run-1",
                "groklab_version": __version__,
                "torch_version": torch.__version__,
                "device": "cpu",
                "status": "completed",
                "planted": {k: v for k, v in info.items() if k != "neuron_freq"},
                "config_hash": chash,
                "seed": seed,
                "split_hash": task.split_hash,
                "final_step": step,
                "n_checkpoints": 2,
                "d_vocab": task.d_vocab,
                "d_vocab_out": task.d_vocab_out,
                "n_ctx": task.n_ctx,
            }
        )
    finally:
        store.close()
    return PlantedRun(path=Path(out), circuit=circuit, config=cfg, steps=[0, step])
