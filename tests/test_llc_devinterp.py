"""Agreement with devinterp 1.3.2 (the optional ``llc-check`` extra; CI installs it).

Same small transformer checkpoint, same settings (epsilon, gamma, nbeta given explicitly —
devinterp's default nbeta uses the batch size), same minibatch size, same seed, same
``L(w*)``: the two estimates must agree within 3 standard errors of their difference. Both
samplers draw their own noise (devinterp from the global generator, groklab from a local one),
so the comparison is statistical, not bitwise. In CI (``CI=true``) a missing devinterp fails
the module instead of skipping it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from conftest import import_extra
from groklab.analysis import llc

devinterp = import_extra("devinterp", "llc-check")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import groklab
    from groklab.config import apply_overrides

    cfg = apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.p=23",
            "data.train_fraction=0.5",
            "model.d_model=32",
            "model.d_head=8",
            "model.d_mlp=64",
            "optim.lr=1e-2",
            "train.steps=150",
            "train.eval_every=50",
            "train.checkpoint_every=150",
        ],
    )
    out = tmp_path_factory.mktemp("llc-devinterp") / "small"
    groklab.train(cfg, out=out, progress=False)
    return out


def _devinterp(run, step: int, s: llc.LLCSettings, nbeta: float, init_loss: float) -> dict:
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    from groklab.train.losses import token_losses

    model = run.model_at(step)
    task = run.task
    loader = DataLoader(
        TensorDataset(task.train_x, task.train_y),
        batch_size=s.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.seed),
    )

    def evaluate(m: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = m(x, n_scored=task.n_scored)
        return token_losses(logits, y, kind="cross_entropy", dtype=torch.float64).mean()

    # devinterp warns freely (deprecations, seeding) and seeds the global generator per chain
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        return estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": s.epsilon, "localization": s.gamma, "nbeta": nbeta},
            num_draws=s.draws,
            num_chains=s.chains,
            num_burnin_steps=s.burnin,
            init_loss=init_loss,
            cores=1,
            seed=s.seed,
            device="cpu",
            verbose=False,
        )


def test_devinterp_version() -> None:
    from importlib.metadata import version

    assert version("devinterp") == "1.3.2"


@pytest.mark.slow
def test_agrees_with_devinterp(small_run: Path) -> None:
    from groklab.run import load_run

    run = load_run(small_run)
    step = run.checkpoint_steps[-1]
    n = run.task.n_train
    # A batch size that divides n: devinterp's DataLoader keeps the short last batch of each
    # epoch (a noisier gradient, which raises its estimate by a few percent); groklab draws
    # full batches only. With equal batches the two samplers are the same algorithm.
    assert n == 264
    # the γ check is groklab's own (devinterp has none): off, the two run the same chains
    s = llc.LLCSettings(
        epsilon=3e-4,
        gamma=100.0,
        chains=8,
        draws=200,
        burnin=100,
        batch_size=66,
        seed=0,
        gamma_check=None,
    )
    ours = llc.estimate_llc_at(run, step, s)
    assert not ours.diverged and ours.warnings == ()
    theirs = _devinterp(run, step, s, ours.nbeta, ours.init_loss)
    # Each estimate is the mean of its chains' estimates, which are independent draws, so its
    # standard error is sd/√chains (sd over chains, ddof 1 in both libraries: torch's std and
    # groklab's llc_std). The two samplers are independent of each other, so the difference of
    # the estimates has SE = √(sd_ours²/c + sd_theirs²/c). A real discrepancy of 3 SE fails;
    # two correct samplers would differ by more only ~1% of the time (t with ~14 dof), and the
    # seeds are fixed, so the outcome does not flicker.
    c = s.chains
    se = math.sqrt(ours.llc_std**2 / c + float(theirs["llc/std"]) ** 2 / c)
    diff = ours.llc - float(theirs["llc/mean"])
    print(
        f"groklab {ours.llc:.3f} ± {ours.llc_std:.3f}  devinterp {theirs['llc/mean']:.3f} ± "
        f"{theirs['llc/std']:.3f} (sd over {c} chains); difference {diff:.3f} = "
        f"{diff / se:.2f} SE (SE {se:.3f}; nbeta {ours.nbeta:.2f}, L(w*) {ours.init_loss:.4g})"
    )
    assert ours.llc > 0
    assert abs(diff) <= 3 * se
    # the traces have the same shape and level: devinterp's loss/trace is [chains, draws], and
    # its mean is L(w*) + llc / nbeta, so it carries the same SE divided by nbeta
    d_trace = theirs["loss/trace"]
    assert d_trace.shape == ours.draws_trace.shape
    assert abs(d_trace.mean() - ours.draws_trace.mean()) <= 3 * se / ours.nbeta
