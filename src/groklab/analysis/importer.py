"""``groklab import``: published grokking checkpoints → a groklab run directory.

Two source layouts are understood, both loaded with ``torch.load(weights_only=True)`` only (no
arbitrary unpickling):

* **The published progress-measures code** (Nanda et al. 2023): ``embed.W_E [d_model,
  d_vocab]``, ``pos_embed.W_pos [n_ctx, d_model]``, ``blocks.{i}.attn.W_Q/W_K/W_V [heads,
  d_head, d_model]``, ``blocks.{i}.attn.W_O [d_model, heads·d_head]``, ``blocks.{i}.mlp.W_in
  [d_mlp, d_model]``, ``b_in``, ``W_out [d_model, d_mlp]``, ``b_out``, ``unembed.W_U [d_model,
  d_vocab]`` (and the attention ``mask`` buffer).
* **A TransformerLens HookedTransformer** state dict: the groklab names and shapes, plus
  attention biases ``b_Q, b_K, b_V, b_O`` and ``unembed.b_U``. ``b_V`` and ``b_O`` add a
  constant to the attention output, which is folded exactly into the MLP biases of a
  one-layer model without LayerNorm; the other biases must be zero (they are in the published
  grokking runs, which freeze them).

The file may hold one state dict, a dict with ``model`` (and ``epoch``, ``train_losses``,
``test_losses`` or ``train_loss``/``test_loss``), or a dict with a list of ``checkpoints``
(``checkpoint_epochs``, loss lists, ``train_indices``/``test_indices``); ``SRC`` may also be a
folder of such files (``<epoch>.pth`` per checkpoint). The config is inferred from the shapes
(``p = d_vocab − 1``, input ``[a, b, =]``); loss lists become ``metrics.parquet`` rows; a model
with ``p`` output classes (TransformerLens demo) gets a zero logit column for ``=``, which
changes no answer-class logit. When the file records the train/test split (``train_indices``
into the row-major ``p × p`` pairs), the split is stored in ``imported_split.safetensors`` and
:attr:`groklab.run.Run.task` serves it to every analysis; ``--published-split-seed`` instead
sets ``data.split = "published"`` with that ``data.split_seed``, so the config rebuilds it.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from groklab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, config_hash
from groklab.errors import CheckpointError, ConfigError
from groklab.store import IMPORTED_SPLIT

__all__ = [
    "SPLIT_FILE",
    "ImportResult",
    "convert_state_dict",
    "import_checkpoint",
]

SPLIT_FILE = IMPORTED_SPLIT


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoint` wrote.

    Attributes:
        config: the inferred run config.
        steps: the checkpoint steps written.
        n_metrics: loss-history rows written to ``metrics.parquet``.
        source_format: ``published`` or ``transformerlens``.
        notes: things the user should know (padded classes, folded biases, split source).
    """

    config: RunConfig
    steps: list[int]
    n_metrics: int
    source_format: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading
def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = (str(e).strip().splitlines() or ["unreadable"])[0][:200]
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({first}); only "
            "tensors, numbers, lists and dicts are accepted"
        ) from None


def _is_state_dict(x: Any) -> bool:
    return isinstance(x, dict) and "embed.W_E" in x and torch.is_tensor(x["embed.W_E"])


def _floats(x: Any) -> list[float] | None:
    if x is None:
        return None
    if torch.is_tensor(x):
        return [float(v) for v in x.flatten()]
    if isinstance(x, (list, tuple)):
        return [float(v.item() if torch.is_tensor(v) else v) for v in x]
    return None


def _unpack(payload: Any, where: Path) -> dict[str, Any]:
    """Normalise one loaded file to checkpoints [(step|None, state dict)] + histories."""
    out: dict[str, Any] = {"checkpoints": []}
    if _is_state_dict(payload):
        out["checkpoints"].append((None, payload))
        return out
    if isinstance(payload, (list, tuple)) and payload and all(_is_state_dict(s) for s in payload):
        out["checkpoints"] = list(enumerate(payload))
        return out
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{where}: holds a {type(payload).__name__}, not a state dict or a dict with "
            "'model'/'checkpoints'"
        )
    epoch = payload.get("epoch")
    epoch = int(epoch) if isinstance(epoch, (int, float)) or torch.is_tensor(epoch) else None
    ckpts = payload.get("checkpoints")
    if ckpts is not None:
        epochs = payload.get("checkpoint_epochs") or list(range(len(ckpts)))
        if len(epochs) != len(ckpts) or not all(_is_state_dict(s) for s in ckpts):
            raise CheckpointError(
                f"{where}: 'checkpoints' must be a list of state dicts with one "
                "'checkpoint_epochs' entry each"
            )
        out["checkpoints"] = [(int(e), s) for e, s in zip(epochs, ckpts, strict=True)]
    for key in ("model", "state_dict", "model_state_dict"):
        if _is_state_dict(payload.get(key)):
            out["checkpoints"].append((epoch, payload[key]))
            break
    if not out["checkpoints"]:
        raise CheckpointError(
            f"{where}: no model weights found (expected a state dict with 'embed.W_E', or a dict "
            f"with 'model' or 'checkpoints'; keys here: {', '.join(map(str, list(payload)[:8]))})"
        )
    out["train_losses"] = _floats(payload.get("train_losses"))
    out["test_losses"] = _floats(payload.get("test_losses"))
    if epoch is not None and out["train_losses"] is None and "train_loss" in payload:
        out["single"] = {
            "step": epoch,
            "train/loss": _floats([payload["train_loss"]])[0],  # type: ignore[index]
            "test/loss": _floats([payload.get("test_loss", float("nan"))])[0],  # type: ignore[index]
        }
    for key in ("train_indices", "test_indices"):
        if torch.is_tensor(payload.get(key)) or isinstance(payload.get(key), (list, tuple)):
            out[key] = torch.as_tensor(payload[key], dtype=torch.long).flatten()
    return out


# --------------------------------------------------------------------------- conversion
_BUFFERS = ("mask", "IGNORE")


def convert_state_dict(
    sd: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """A published or TransformerLens state dict in groklab names/shapes.

    Returns:
        ``(weights, source_format, notes)``; ``W_U`` keeps the source's class count.

    Raises:
        CheckpointError: missing tensors, unexpected shapes, or non-zero biases that groklab's
            transformer cannot represent.
    """
    sd = {k: v.detach().float() for k, v in sd.items() if torch.is_tensor(v)}
    sd = {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in _BUFFERS and "hook" not in k}
    need = ["embed.W_E", "pos_embed.W_pos", "unembed.W_U", "blocks.0.attn.W_O", "blocks.0.attn.W_Q"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"state dict lacks {missing[0]!r}; not a grokking transformer")
    published = sd["blocks.0.attn.W_O"].dim() == 2
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}
    if published:
        fmt = "published"
        out["embed.W_E"] = sd.pop(
            "embed.W_E"
        ).T.contiguous()  # [d_model, d_vocab] → [d_vocab, d_model]
        for k, v in sd.items():
            name = k.rsplit(".", 1)[-1]
            if ".attn.W_" in k and name in ("W_Q", "W_K", "W_V"):
                out[k] = v.transpose(1, 2).contiguous()  # [h, e, d] → [h, d, e]
            elif k.endswith(".attn.W_O"):
                h, e = sd[k.replace("W_O", "W_Q")].shape[:2]
                # z_flat index = head·d_head + j (heads outer); out = W_O @ z_flat.
                out[k] = v.reshape(v.shape[0], h, e).permute(1, 2, 0).contiguous()  # [h, e, d]
            elif k.endswith(".mlp.W_in") or k.endswith(".mlp.W_out"):
                out[k] = v.T.contiguous()  # [d_mlp, d_model] → [d_model, d_mlp] and back
            else:
                out[k] = v
    else:
        fmt = "transformerlens"
        out = dict(sd)
        layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
        for i in layers:
            pre = f"blocks.{i}.attn."
            for b in ("b_Q", "b_K"):
                v = out.pop(pre + b, None)
                if v is not None and v.abs().max() > 0:
                    raise CheckpointError(
                        f"{pre}{b} is non-zero; groklab's transformer has no query/key biases"
                    )
            b_v, b_o = out.pop(pre + "b_V", None), out.pop(pre + "b_O", None)
            # Attention rows sum to 1, so b_V adds Σ_h b_V[h]·W_O[h] to every output, like b_O.
            const = torch.zeros(out[pre + "W_O"].shape[-1])
            if b_v is not None:
                const += torch.einsum("he,hed->d", b_v, out[pre + "W_O"])
            if b_o is not None:
                const += b_o
            if const.abs().max() > 0:
                mlp = f"blocks.{i}.mlp."
                if len(layers) > 1 or any(".ln" in k for k in out) or mlp + "W_in" not in out:
                    raise CheckpointError(
                        f"{pre}b_V/b_O are non-zero; they can only be folded into the MLP biases "
                        "of a one-layer model without LayerNorm"
                    )
                out[mlp + "b_in"] = out[mlp + "b_in"] + const @ out[mlp + "W_in"]
                out[mlp + "b_out"] = out[mlp + "b_out"] + const
                notes.append("attention biases b_V/b_O folded into the MLP biases b_in/b_out")
        b_u = out.pop("unembed.b_U", None)
        if b_u is not None and b_u.abs().max() > 0:
            raise CheckpointError(
                "unembed.b_U is non-zero; groklab's transformer has no unembedding bias"
            )
    return out, fmt, notes


def _infer_config(
    w: dict[str, torch.Tensor],
    *,
    name: str,
    operation: str,
    train_fraction: float,
    steps: int,
    act: str,
) -> RunConfig:
    d_vocab, d_model = w["embed.W_E"].shape
    n_heads, _, d_head = w["blocks.0.attn.W_Q"].shape
    n_layers = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    attn_only = "blocks.0.mlp.W_in" not in w
    d_mlp = 4 * d_model if attn_only else int(w["blocks.0.mlp.W_in"].shape[1])
    return RunConfig(
        name=name,
        data=DataConfig(p=int(d_vocab) - 1, operations=(operation,), train_fraction=train_fraction),
        model=ModelConfig(
            n_layers=n_layers,
            d_model=int(d_model),
            n_heads=int(n_heads),
            d_head=int(d_head),
            d_mlp=d_mlp,
            act=act,
            layernorm="blocks.0.ln1.w" in w,
            attn_only=attn_only,
        ),
        train=TrainConfig(steps=max(1, steps), checkpoint_every=max(1, steps)),
    )


# --------------------------------------------------------------------------- the split
def _split_tensors(
    p: int, train_rows: torch.Tensor, test_rows: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    n = p * p
    if train_rows.numel() and (int(train_rows.min()) < 0 or int(train_rows.max()) >= n):
        raise CheckpointError(f"train_indices fall outside the {p}×{p} = {n} pairs")
    if test_rows is None:
        keep = torch.ones(n, dtype=torch.bool)
        keep[train_rows] = False
        test_rows = torch.nonzero(keep).flatten()
    return {"train_rows": train_rows, "test_rows": test_rows}


# --------------------------------------------------------------------------- import
def import_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    operation: str = "add",
    train_fraction: float | None = None,
    published_split_seed: int | None = None,
    act: str = "relu",
    name: str | None = None,
) -> ImportResult:
    """Write a groklab run directory from a published / TransformerLens checkpoint.

    Args:
        src: a ``.pth``/``.pt`` file or a folder of them.
        out: the run directory to create (must be new or empty).
        operation: what the model computes (``add``, ``sub``, ``mul``, ``div``, ``quad``).
        train_fraction: the training share (default: from the recorded split, else 0.3).
        published_split_seed: rebuild the published code's Python-``random`` split.
        act: the MLP activation.
        name: run name (default ``imported-<src stem>``).

    Raises:
        CheckpointError: unreadable or foreign file, shapes that do not fit a transformer.
        ConfigError / RunExistsError: bad options or a non-empty ``out``.
    """
    from groklab._version import __version__
    from groklab.models import build_model
    from groklab.run import load_run
    from groklab.store import RunStore, atomic_write_bytes
    from groklab.tasks import build_task

    src = Path(src)
    if src.is_dir():
        files = sorted([*src.glob("*.pth"), *src.glob("*.pt")])
        if not files:
            raise CheckpointError(f"{src}: folder holds no .pth/.pt files")
    elif src.exists():
        files = [src]
    else:
        raise CheckpointError(f"{src}: no such file or folder")

    ckpts: dict[int, dict[str, torch.Tensor]] = {}
    hist: dict[str, Any] = {}
    singles: list[dict[str, float]] = []
    for f in files:
        part = _unpack(_load(f), f)
        for step, sd in part["checkpoints"]:
            if step is None:
                step = int(f.stem) if f.stem.isdigit() else None
            if step is None:
                n_hist = len(part.get("train_losses") or [])
                step = n_hist or (max(ckpts) + 1 if ckpts else 0)
            ckpts[int(step)] = sd
        for k in ("train_losses", "test_losses", "train_indices", "test_indices"):
            if part.get(k) is not None:
                hist[k] = part[k]
        if "single" in part:
            singles.append(part["single"])

    converted = {s: convert_state_dict(sd) for s, sd in sorted(ckpts.items())}
    formats = {fmt for _, fmt, _ in converted.values()}
    notes = sorted({n for _, _, ns in converted.values() for n in ns})
    first = next(iter(converted.values()))[0]
    p = int(first["embed.W_E"].shape[0]) - 1

    train_rows = hist.get("train_indices")
    if published_split_seed is not None and train_rows is not None:
        raise ConfigError("--published-split-seed conflicts with the split recorded in the file")
    if train_fraction is None:
        train_fraction = len(train_rows) / (p * p) if train_rows is not None else 0.3
    steps = sorted(converted)
    cfg = _infer_config(
        first,
        name=name or f"imported-{src.stem}",
        operation=operation,
        train_fraction=train_fraction,
        steps=steps[-1],
        act=act,
    )
    if published_split_seed is not None:  # the config itself rebuilds the published split
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, split="published", split_seed=published_split_seed),
        )
    task = build_task(cfg.data)
    if cfg.data.operations[0] in ("mul", "div") and train_rows is not None:
        raise ConfigError("an imported split is only supported for add/sub/quad")
    model = build_model(cfg.model, task, seed=0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def fit(w: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        w = dict(w)
        n_out, n_want = w["unembed.W_U"].shape[1], shapes["unembed.W_U"][1]
        if n_out == n_want - 1:  # p answer classes: add a zero logit column for '='
            w["unembed.W_U"] = torch.cat(
                [w["unembed.W_U"], torch.zeros(len(w["unembed.W_U"]), 1)], 1
            )
        n_ctx = shapes["pos_embed.W_pos"][0]
        if w["pos_embed.W_pos"].shape[0] > n_ctx:  # a longer context than [a, b, =] is unused
            w["pos_embed.W_pos"] = w["pos_embed.W_pos"][:n_ctx]
        extra = sorted(set(w) - set(shapes))
        bad = [k for k in shapes if k not in w or tuple(w[k].shape) != shapes[k]]
        if extra or bad:
            k = (extra or bad)[0]
            got = tuple(w[k].shape) if k in w else "missing"
            raise CheckpointError(
                f"{src} (step {step}): tensor {k!r} {got} does not fit the inferred model "
                f"(expected {shapes.get(k, 'no such tensor')})"
            )
        return {k: w[k].contiguous() for k in shapes}

    weights = {s: fit(w, s) for s, (w, _, _) in converted.items()}
    if next(iter(converted.values()))[0]["unembed.W_U"].shape[1] == p:
        notes.append("the model has p answer classes; a zero logit column was added for '='")

    rows: list[dict[str, Any]] = []
    tl, vl = hist.get("train_losses"), hist.get("test_losses")
    if tl is not None:
        for i, loss in enumerate(tl):
            r = {"step": i, "train/loss": loss}
            if vl is not None and i < len(vl):
                r["test/loss"] = vl[i]
            rows.append(r)
    elif singles:
        rows = sorted(singles, key=lambda r: r["step"])

    chash = config_hash(cfg)
    store = RunStore.create(out, cfg)
    try:
        meta = {"config_hash": chash, "groklab_version": __version__, "imported_from": str(src)}
        for s, w in weights.items():
            store.write_checkpoint(s, w, meta)
        if rows:
            store.write_metrics(rows)
        if train_rows is not None:
            split = _split_tensors(p, train_rows, hist.get("test_indices"))
            atomic_write_bytes(store.path / SPLIT_FILE, st_save(split))
            notes.append(f"train/test split from the file stored in {SPLIT_FILE}")
            task = load_run(store.path).task  # the run's task on that split
        elif published_split_seed is not None:
            notes.append(
                f"train/test split: the published code's shuffle with seed {published_split_seed} "
                "(data.split='published')"
            )
        else:
            notes.append(
                "no train/test split recorded; the analysis uses groklab's split of the same size "
                "(give --published-split-seed to rebuild the published one)"
            )
        store.write_manifest(
            {
                "format": "groklab-run-1",
                "groklab_version": __version__,
                "torch_version": torch.__version__,
                "status": "completed",
                "imported_from": str(src.resolve()),
                "source_format": "/".join(sorted(formats)),
                "config_hash": chash,
                "seed": None,
                "split_hash": task.split_hash,
                "n_train": task.n_train,
                "n_test": task.n_test,
                "final_step": steps[-1],
                "n_checkpoints": len(steps),
                "d_vocab": task.d_vocab,
                "d_vocab_out": task.d_vocab_out,
                "n_ctx": task.n_ctx,
            }
        )
    finally:
        store.close()
    return ImportResult(
        config=cfg,
        steps=steps,
        n_metrics=len(rows),
        source_format="/".join(sorted(formats)),
        notes=notes,
    )
