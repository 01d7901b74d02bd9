"""Small helpers shared by the run and the sweep report: quoting a path for a shell
command and drawing one summary card.

Both the run sections (:mod:`groklab.report.collect.sections`) and the sweep sections
(:mod:`groklab.report.collect.sweep`) name commands the reader can paste (``_q`` quotes the path)
and open with a row of key/value cards (``_card``); the helpers live here once so that neither
half imports the other for them.
"""

from __future__ import annotations

import html
import shlex
from pathlib import Path


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _card(k: str, v: str, cls: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{html.escape(k)}</div>'
        f'<div class="v {cls}">{html.escape(v)}</div></div>'
    )
