"""The README's commands run, and every relative link in README.md and docs/ resolves.

Every ``groklab ...`` command in a README code block (also one chained after ``&&``) is found
and run, in order, in one temporary directory: either as written, or through the explicit tiny
variant in ``TINY`` below, with the reason. A README command missing from ``TINY``/``AS_IS``
fails the test, so nothing is skipped silently. Other commands in the code blocks (``pip``,
``pytest``, ``mkdocs``) are not groklab commands and are not run here (CI runs them).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

TINY_TRAIN = "--set train.steps=20"

# README command -> (the command run here, why it differs). Order is the README's.
TINY: dict[str, tuple[str, str]] = {
    # From the "Two commands" install line. 40,000 steps (half an hour): 20 steps still
    # train, write the report (static figures too, with Chromium) and print its path.
    "groklab train --preset nanda2023 --report": (
        f"groklab train --preset nanda2023 --report {TINY_TRAIN}",
        "40k steps -> 20",
    ),
    # 3,000 steps (about a minute): 20 steps leave checkpoints at 0 and 20.
    "groklab train --preset smoke --out runs/smoke": (
        f"groklab train --preset smoke --out runs/smoke {TINY_TRAIN}",
        "3k steps -> 20",
    ),
    "groklab train --preset smoke --set optim.weight_decay=0.3 --set train.seed=2 --out runs/wd03": (
        "groklab train --preset smoke --set optim.weight_decay=0.3 --set train.seed=2 "
        f"--out runs/wd03 {TINY_TRAIN}",
        "3k steps -> 20",
    ),
    # The README's steps 250 and 500 are not in a 20-step run; a short sampler and no γ check
    # keep it to seconds.
    "groklab llc runs/smoke --steps 0,250,500": (
        "groklab llc runs/smoke --steps 0,20 --chains 2 --draws 10 --burnin 5 --gamma-check 0 -q",
        "the 20-step run's checkpoints; a short sampler",
    ),
}
# Run exactly as written (each takes seconds on the tiny runs above).
AS_IS = {
    "groklab --help",
    "groklab presets",
    "groklab train --resume runs/wd03",  # the run is complete: resuming it is a quick no-op
    "groklab show runs/smoke",
    "groklab analyze runs/smoke",
    "groklab report runs/smoke --no-static",
    "groklab sweep studies",
}


def readme_commands(text: str) -> list[str]:
    """The ``groklab ...`` commands in the fenced code blocks of ``text``, in order."""
    commands: list[str] = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()  # trailing comments
                if part.startswith("groklab"):
                    commands.append(" ".join(part.split()))
    return commands


def test_every_readme_command_is_mapped() -> None:
    found = readme_commands(README.read_text())
    assert found, "no groklab command found in README.md"
    unmapped = [c for c in found if c not in TINY and c not in AS_IS]
    assert not unmapped, f"README commands with no entry in TINY or AS_IS: {unmapped}"
    stale = (set(TINY) | AS_IS) - set(found)
    assert not stale, f"entries for commands no longer in the README: {stale}"


@pytest.mark.slow
def test_readme_commands_run(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    for command in readme_commands(README.read_text()):
        run = TINY[command][0] if command in TINY else command
        argv = [sys.executable, "-m", "groklab.cli", *shlex.split(run)[1:]]
        # One torch thread for every training command: the suite shares the machine.
        if "train" in argv and "--resume" not in argv:
            argv += ["--threads", "1"]
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, (
            f"{run!r} (README: {command!r}) exited {proc.returncode}:\n{out}"
        )
        assert out.strip(), f"{run!r} printed nothing"
        if command == "groklab --help":
            assert "train" in out and "sweep" in out


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # not in code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        file = target.split("#")[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"
