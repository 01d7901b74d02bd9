"""`groklab import`: published and TransformerLens layouts give the same logits in groklab."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import groklab
from groklab.analysis import fourier as fr
from groklab.analysis import llc, progress
from groklab.analysis.importer import import_checkpoint
from groklab.cli import app
from groklab.errors import CheckpointError

P, D_MODEL, HEADS, D_HEAD, D_MLP = 7, 8, 2, 4, 16


def _all_inputs(p: int = P) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)


def _published_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the published progress-measures layout."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) / math.sqrt(D_MODEL)

    d_vocab = P + 1
    return {
        "embed.W_E": r(D_MODEL, d_vocab),
        "pos_embed.W_pos": r(3, D_MODEL),
        "blocks.0.attn.W_K": r(HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_Q": r(HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_V": r(HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_O": r(D_MODEL, HEADS * D_HEAD),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": r(D_MLP, D_MODEL),
        "blocks.0.mlp.b_in": r(D_MLP),
        "blocks.0.mlp.W_out": r(D_MODEL, D_MLP),
        "blocks.0.mlp.b_out": r(D_MODEL),
        "unembed.W_U": r(D_MODEL, d_vocab),
    }


def _published_forward(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """A direct implementation of the published layout: logits at the last position."""
    x = sd["embed.W_E"][:, tokens]  # [d, batch, pos]
    x = torch.einsum("dbp->bpd", x) + sd["pos_embed.W_pos"][: tokens.shape[1]]
    k = torch.einsum("ihd,bpd->biph", sd["blocks.0.attn.W_K"], x)
    q = torch.einsum("ihd,bpd->biph", sd["blocks.0.attn.W_Q"], x)
    v = torch.einsum("ihd,bpd->biph", sd["blocks.0.attn.W_V"], x)
    scores = torch.einsum("biph,biqh->biqp", k, q)
    n = tokens.shape[1]
    mask = torch.tril(torch.ones(n, n))
    scores = torch.tril(scores) - 1e10 * (1 - mask)
    pattern = torch.softmax(scores / math.sqrt(D_HEAD), dim=-1)
    z = torch.einsum("biph,biqp->biqh", v, pattern)
    z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], n, -1)  # b i q h -> b q (i h)
    x = x + torch.einsum("df,bqf->bqd", sd["blocks.0.attn.W_O"], z_flat)
    pre = torch.einsum("md,bpd->bpm", sd["blocks.0.mlp.W_in"], x) + sd["blocks.0.mlp.b_in"]
    x = x + torch.einsum("dm,bpm->bpd", sd["blocks.0.mlp.W_out"], torch.relu(pre))
    x = x + sd["blocks.0.mlp.b_out"]
    return (x @ sd["unembed.W_U"])[:, -1]


def _tl_state_dict(seed: int = 1, *, b_q: float = 0.0) -> dict[str, torch.Tensor]:
    """Random weights in the TransformerLens layout, p output classes, non-zero b_V/b_O."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) / math.sqrt(D_MODEL)

    return {
        "embed.W_E": r(P + 1, D_MODEL),
        "pos_embed.W_pos": r(3, D_MODEL),
        "blocks.0.attn.W_Q": r(HEADS, D_MODEL, D_HEAD),
        "blocks.0.attn.W_K": r(HEADS, D_MODEL, D_HEAD),
        "blocks.0.attn.W_V": r(HEADS, D_MODEL, D_HEAD),
        "blocks.0.attn.W_O": r(HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.b_Q": torch.full((HEADS, D_HEAD), b_q),
        "blocks.0.attn.b_K": torch.zeros(HEADS, D_HEAD),
        "blocks.0.attn.b_V": r(HEADS, D_HEAD),
        "blocks.0.attn.b_O": r(D_MODEL),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)).bool(),
        "blocks.0.attn.IGNORE": torch.tensor(-1e5),
        "blocks.0.mlp.W_in": r(D_MODEL, D_MLP),
        "blocks.0.mlp.b_in": r(D_MLP),
        "blocks.0.mlp.W_out": r(D_MLP, D_MODEL),
        "blocks.0.mlp.b_out": r(D_MODEL),
        "unembed.W_U": r(D_MODEL, P),
        "unembed.b_U": torch.zeros(P),
    }


def _tl_forward(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """A direct implementation of a 1-layer HookedTransformer without LayerNorm."""
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][: tokens.shape[1]]
    q = torch.einsum("bpd,hde->bphe", x, sd["blocks.0.attn.W_Q"]) + sd["blocks.0.attn.b_Q"]
    k = torch.einsum("bpd,hde->bphe", x, sd["blocks.0.attn.W_K"]) + sd["blocks.0.attn.b_K"]
    v = torch.einsum("bpd,hde->bphe", x, sd["blocks.0.attn.W_V"]) + sd["blocks.0.attn.b_V"]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(D_HEAD)
    n = tokens.shape[1]
    scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf"))
    z = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)
    x = x + torch.einsum("bqhe,hed->bqd", z, sd["blocks.0.attn.W_O"]) + sd["blocks.0.attn.b_O"]
    post = torch.relu(x @ sd["blocks.0.mlp.W_in"] + sd["blocks.0.mlp.b_in"])
    x = x + post @ sd["blocks.0.mlp.W_out"] + sd["blocks.0.mlp.b_out"]
    return (x @ sd["unembed.W_U"] + sd["unembed.b_U"])[:, -1]


def _groklab_logits(run_dir, step: int) -> torch.Tensor:
    model = groklab.load_run(run_dir).model_at(step)
    with torch.no_grad():
        return model(_all_inputs(), n_scored=1)[:, -1]


def test_published_checkpoint_imports_with_identical_logits(tmp_path):
    sd = _published_state_dict()
    src = tmp_path / "final.pth"
    torch.save(
        {
            "model": sd,
            "train_losses": [4.0, 3.0, 2.0, 1.5],
            "test_losses": [4.1, 4.2, 4.3, 4.4],
            "epoch": 3,
        },
        src,
    )
    res = import_checkpoint(src, tmp_path / "run")
    assert res.source_format == "published" and res.steps == [3]
    cfg = res.config
    assert (
        cfg.data.p,
        cfg.model.d_model,
        cfg.model.n_heads,
        cfg.model.d_head,
        cfg.model.d_mlp,
    ) == (
        P,
        D_MODEL,
        HEADS,
        D_HEAD,
        D_MLP,
    )
    with torch.no_grad():
        want = _published_forward(sd, _all_inputs())
    torch.testing.assert_close(_groklab_logits(tmp_path / "run", 3), want, rtol=1e-5, atol=1e-5)
    run = groklab.load_run(tmp_path / "run")
    assert run.status == "completed"
    assert run.metrics["train/loss"].tolist() == [4.0, 3.0, 2.0, 1.5]
    assert run.metrics["test/loss"].tolist() == pytest.approx([4.1, 4.2, 4.3, 4.4])


def test_transformerlens_state_dict_folds_value_biases(tmp_path):
    sd = _tl_state_dict()
    torch.save(sd, tmp_path / "tl.pt")
    res = import_checkpoint(tmp_path / "tl.pt", tmp_path / "run")
    assert res.source_format == "transformerlens" and res.steps == [0]
    assert any("folded" in n for n in res.notes) and any(
        "zero logit column" in n for n in res.notes
    )
    got = _groklab_logits(tmp_path / "run", 0)
    with torch.no_grad():
        want = _tl_forward(sd, _all_inputs())
    torch.testing.assert_close(got[:, :P], want, rtol=1e-5, atol=1e-5)
    assert (got[:, P] == 0).all()  # the padded '=' class


def test_checkpoint_list_with_split(tmp_path):
    ckpts = [_published_state_dict(s) for s in range(3)]
    train = torch.randperm(P * P, generator=torch.Generator().manual_seed(0))[:20]
    torch.save(
        {
            "checkpoints": ckpts,
            "checkpoint_epochs": [0, 5, 10],
            "train_losses": [float(i) for i in range(11)],
            "test_losses": [float(i) for i in range(11)],
            "train_indices": train,
        },
        tmp_path / "full_run.pth",
    )
    res = import_checkpoint(tmp_path / "full_run.pth", tmp_path / "run")
    assert res.steps == [0, 5, 10] and res.n_metrics == 11
    assert res.config.data.train_fraction == pytest.approx(20 / 49)
    run = groklab.load_run(tmp_path / "run")
    with torch.no_grad():
        want = _published_forward(ckpts[1], _all_inputs())
    torch.testing.assert_close(_groklab_logits(tmp_path / "run", 5), want, rtol=1e-5, atol=1e-5)
    # Analysis scores train/test on the recorded split, not on groklab's own.
    grid = fr.operation_grid(run.task)
    assert sorted(torch.nonzero(grid.train).flatten().tolist()) == sorted(train.tolist())
    assert int(grid.test.sum()) == P * P - 20


def test_folder_of_epoch_files(tmp_path):
    src = tmp_path / "published_run"
    src.mkdir()
    for epoch in (0, 4):
        torch.save({"model": _published_state_dict(epoch), "epoch": epoch}, src / f"{epoch}.pth")
    losses = {"train_losses": [3.0, 2.0, 1.0, 0.5, 0.2, 0.1], "test_losses": [3.0] * 6}
    torch.save({"model": _published_state_dict(9), **losses}, src / "final.pth")
    res = import_checkpoint(src, tmp_path / "run")
    assert res.steps == [0, 4, 6] and res.n_metrics == 6
    with torch.no_grad():
        want = _published_forward(_published_state_dict(4), _all_inputs())
    torch.testing.assert_close(_groklab_logits(tmp_path / "run", 4), want, rtol=1e-5, atol=1e-5)


def _imported_run_with_split(tmp_path):
    """An imported run whose file records a split unlike groklab's split of the same size."""
    train = torch.randperm(P * P, generator=torch.Generator().manual_seed(5))[:20]
    torch.save(
        {"model": _published_state_dict(2), "epoch": 4, "train_indices": train}, tmp_path / "m.pth"
    )
    import_checkpoint(tmp_path / "m.pth", tmp_path / "run")
    return groklab.load_run(tmp_path / "run"), train


def test_every_analysis_of_an_imported_run_uses_its_recorded_split(tmp_path):
    from groklab.report.collect import load_run_data
    from groklab.tasks import build_task, tensor_hash

    run, train = _imported_run_with_split(tmp_path)
    x = _all_inputs()
    own = build_task(run.config.data)  # groklab's split of the same size: must not be used
    assert own.n_train == 20
    assert sorted((own.train_x[:, 0] * P + own.train_x[:, 1]).tolist()) != sorted(train.tolist())
    # The run serves the recorded rows, in the recorded order.
    assert torch.equal(run.task.train_x, x[train])
    assert run.task.n_test == P * P - 20
    with torch.no_grad():
        logits = _published_forward(_published_state_dict(2), x).double()  # [p², d_vocab]
    y = (x[:, 0] + x[:, 1]) % P
    # LLC: the loss at w* is the run's float64 cross-entropy over all classes on those rows.
    want_llc = F.cross_entropy(logits[train], y[train]).item()
    assert llc.run_loss(run, 4).init_loss == pytest.approx(want_llc, rel=1e-5)
    # Progress measures: train loss over the p answer classes on those rows.
    want_prog = F.cross_entropy(logits[train, :P], y[train]).item()
    table = progress.progress_measures(run, key_freqs=[1]).table
    assert table["add/train_loss"].iloc[-1] == pytest.approx(want_prog, rel=1e-5)
    # Report: the sizes and split hash of those rows.
    test_rows = torch.ones(P * P, dtype=torch.bool)
    test_rows[train] = False
    split = load_run_data(tmp_path / "run").split
    assert (split["n_train"], split["n_test"], split["source"]) == (20, P * P - 20, "imported")
    assert split["split_hash"] == tensor_hash(x[train], x[test_rows])


def test_continuing_from_an_imported_split_is_refused(tmp_path):
    """A child would subset groklab's split, not the rows the parent was trained on."""
    from groklab.dcrit import continue_config
    from groklab.errors import ConfigError

    run, _ = _imported_run_with_split(tmp_path)
    with pytest.raises(ConfigError, match="imported split"):
        continue_config(f"{run.path}@4", ["data.train_size=10"])


def test_llc_cache_of_an_imported_run_belongs_to_its_split(tmp_path):
    """An LLC cached on the imported rows is never served for another split (and vice versa)."""
    run, _ = _imported_run_with_split(tmp_path)
    s = llc.LLCSettings(chains=1, draws=4, burnin=0, batch_size=None)
    llc.llc_over_checkpoints(run, s)
    assert len(llc.read_cache(run, s)[0]) == 1
    split_file = run.path / "imported_split.safetensors"
    split_file.rename(tmp_path / "aside")  # the same run read as if on groklab's split
    assert len(llc.read_cache(groklab.load_run(run.path), s)[0]) == 0


def test_published_split_seed_sets_the_published_split_in_the_config(tmp_path):
    torch.save({"model": _published_state_dict(), "epoch": 1}, tmp_path / "m.pth")
    res = import_checkpoint(tmp_path / "m.pth", tmp_path / "run", published_split_seed=3)
    assert (res.config.data.split, res.config.data.split_seed) == ("published", 3)
    pairs = [(i, j) for i in range(P) for j in range(P)]
    random.Random(3).shuffle(pairs)
    run = groklab.load_run(tmp_path / "run")
    assert [tuple(r) for r in run.task.train_x[:, :2].tolist()] == pairs[: int(0.3 * P * P)]
    assert run.manifest["split_hash"] == run.task.split_hash


class _NotATensor:
    pass


def test_foreign_files_are_refused(tmp_path):
    torch.save({"model": _NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        import_checkpoint(tmp_path / "pickle.pth", tmp_path / "a")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no model weights"):
        import_checkpoint(tmp_path / "other.pth", tmp_path / "b")
    sd = _tl_state_dict(b_q=0.5)
    torch.save(sd, tmp_path / "bq.pt")
    with pytest.raises(CheckpointError, match="b_Q is non-zero"):
        import_checkpoint(tmp_path / "bq.pt", tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_cli_import_then_analyze(tmp_path):
    torch.save({"model": _published_state_dict(), "epoch": 7}, tmp_path / "m.pth")
    runner = CliRunner()
    res = runner.invoke(app, ["import", str(tmp_path / "m.pth"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "groklab analyze" in res.output
    res = runner.invoke(app, ["analyze", str(tmp_path / "run"), "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "key frequencies" in res.output
    bad = runner.invoke(
        app, ["import", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2
    assert "no such file" in bad.output
