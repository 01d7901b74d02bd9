"""Assemble report sections into one self-contained HTML file, and export the figures.

The HTML file carries plotly.js once, inline, and every figure's data as JSON in a
``<script type="application/json">`` block; a small inline script draws them with
``Plotly.newPlot`` and, when every figure is drawn, sets ``data-report-ready="ok"`` on
``<html>`` (``"error"`` and ``window.groklabReport.errors`` if one failed), so a test or a
benchmark knows when the page is done. Nothing is fetched from the network: the file opens
from disk on an offline machine.

Static copies of the same figures (PNG and SVG by default) are written by plotly's own
renderer (kaleido 1.x driving a local Chrome/Chromium, e.g. Debian's ``chromium``), so the
files for a paper are pixel-for-pixel the figures of the interactive report.
"""

from __future__ import annotations

import datetime as _dt
import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groklab.errors import GroklabError

__all__ = [
    "Markup",
    "ReportError",
    "Section",
    "StaticExportError",
    "code",
    "kv_table",
    "render_html",
    "sortable_table",
    "subtitle_line",
    "write_report",
    "write_static",
]

STATIC_WIDTH = 1000
STATIC_SCALE = 2
# kaleido's own default (90 s per figure) is too short on a loaded machine
STATIC_TIMEOUT_S = 600


class ReportError(GroklabError):
    """The directory cannot be reported on (not a run or sweep directory, ...)."""


class StaticExportError(GroklabError):
    """Static figures could not be written (no Chrome/Chromium for kaleido, ...)."""


@dataclass(frozen=True)
class Section:
    """One section of a report.

    Attributes:
        key: anchor id and file-name prefix of its figures (``[a-z0-9-]``).
        title: heading.
        figures: figure name → plotly figure (the name is the static file's stem).
        html: HTML shown above the figures (summary cards, tables, notes).
        caption: a short text under the heading (what to look for).
        absent: why the section has no data; shown instead of figures when set.
        command: the command that would produce the missing data.
    """

    key: str
    title: str
    figures: Mapping[str, Any] = field(default_factory=dict)
    html: str = ""
    caption: str = ""
    absent: str | None = None
    command: str | None = None


# --------------------------------------------------------------------------- HTML helpers
def code(text: str) -> str:
    """Inline code, escaped."""
    return f"<code>{html.escape(text)}</code>"


def kv_table(rows: Iterable[tuple[str, Any]], *, cls: str = "kv") -> str:
    """A two-column key/value table (values are escaped unless already ``Markup``)."""
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


class Markup(str):
    """A string that is already HTML (not escaped again)."""


def _cell(v: Any) -> str:
    if isinstance(v, Markup):
        return str(v)
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, float):
        return html.escape(f"{v:.4g}")
    return html.escape(str(v))


def sortable_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    table_id: str,
    formats: Mapping[str, str] | None = None,
) -> str:
    """An HTML table whose columns sort on click (numbers numerically, blanks last).

    Args:
        columns: header labels.
        rows: cell values (``None``/NaN = blank); each cell keeps its raw value in
            ``data-v`` so sorting uses numbers, not their formatted text.
        table_id: the table's id.
        formats: column → Python format spec for floats (default ``.4g``).
    """
    formats = formats or {}
    head = "".join(
        f'<th data-col="{i}" title="click to sort">{html.escape(c)}</th>'
        for i, c in enumerate(columns)
    )
    out = []
    for r in rows:
        cells = []
        for c, v in zip(columns, r, strict=True):
            if v is None or (isinstance(v, float) and v != v):
                cells.append('<td data-v=""></td>')
            elif isinstance(v, bool):
                cells.append(f'<td data-v="{int(v)}">{"yes" if v else "no"}</td>')
            elif isinstance(v, int | float):
                text = f"{v:{formats.get(c, ',' if isinstance(v, int) else '.4g')}}"
                cells.append(f'<td class="num" data-v="{v!r}">{html.escape(text)}</td>')
            else:
                text = html.escape(str(v))
                cls = ' class="long"' if len(str(v)) > 60 else ""  # let long text wrap
                cells.append(f'<td{cls} data-v="{text}">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table class="sortable" id="{html.escape(table_id)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(out)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- page
_CSS = """
:root{--ink:#1d2530;--muted:#6b7480;--line:#e3e7ec;--bg:#f6f7f9;--card:#fff;--accent:#1f5fa8;
--warn:#b5651d}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 Inter,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
color:var(--ink);background:var(--bg)}
header{background:#18212c;color:#fff;padding:22px 32px 16px}
header h1{margin:0;font-size:24px;font-weight:650;letter-spacing:.2px}
header .sub{color:#b7c2cf;font-size:13px;margin-top:4px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);
padding:8px 32px;display:flex;flex-wrap:wrap;gap:6px 16px;font-size:13px}
nav a{color:var(--accent);text-decoration:none}
nav a.absent{color:var(--muted)}
main{max-width:1240px;margin:0 auto;padding:20px 24px 60px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
margin:18px 0;padding:18px 22px}
section h2{margin:0 0 4px;font-size:19px}
.caption{color:var(--muted);margin:0 0 10px;font-size:14px}
.plot{width:100%;min-height:300px}
.absent-box{border:1px dashed #c9ced6;border-radius:8px;background:#fafbfc;padding:14px 16px;
color:#3b4450}
.absent-box b{color:var(--warn)}
code{font:13px/1.4 "JetBrains Mono",Menlo,Consolas,monospace;background:#eef1f5;
border-radius:4px;padding:1px 5px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px;
margin:8px 0 14px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fbfcfd}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.4px}
.card .v{font-size:20px;font-weight:650;margin-top:2px}
.card .v.good{color:#2a8a4a}.card .v.bad{color:#b23b3b}
table{border-collapse:collapse;font-size:13px}
table.kv th{text-align:left;color:var(--muted);font-weight:500;padding:2px 14px 2px 0;
vertical-align:top}
table.kv td{padding:2px 0}
.table-wrap{overflow-x:auto;max-height:560px;overflow-y:auto;border:1px solid var(--line);
border-radius:8px}
table.sortable{width:100%}
table.sortable th{position:sticky;top:0;background:#eef1f5;cursor:pointer;text-align:left;
padding:6px 10px;white-space:nowrap;user-select:none}
table.sortable th.asc::after{content:" ▲";font-size:10px}
table.sortable th.desc::after{content:" ▼";font-size:10px}
table.sortable td{padding:4px 10px;border-top:1px solid var(--line);white-space:nowrap}
table.sortable td.long{white-space:normal;min-width:360px}
table.sortable td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin-top:8px}
details pre{background:#f3f5f8;border-radius:8px;padding:10px;font-size:12.5px;overflow:auto}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:900px){.two{grid-template-columns:1fr}}
.muted{color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
"""

# Draws every figure, then marks the page ready (for tests/benchmarks); a small table sorter.
_JS = r"""
(function(){
  // Figures are drawn when they come within 200 px of the viewport, so a long report
  // opens as fast as its first screen; drawAll() draws the rest (tests, printing).
  var report = window.groklabReport = {errors: [], rendered: [], timings: {}};
  var divs = Array.prototype.slice.call(document.querySelectorAll('div.plot[data-fig]'));
  var jobs = {};
  function draw(div){
    var name = div.getAttribute('data-fig');
    if (jobs[name]) return jobs[name];
    var t = performance.now();
    try {
      var spec = JSON.parse(document.getElementById(div.id + '-json').textContent);
      var cfg = {responsive: true, displaylogo: false,
                 toImageButtonOptions: {format: 'png', filename: name, scale: 2}};
      jobs[name] = Plotly.newPlot(div, spec.data, spec.layout, cfg).then(function(){
        report.timings[name] = performance.now() - t;
        report.rendered.push(name);
        if (report.rendered.length + report.errors.length === divs.length) {
          report.completeMs = performance.now();
          document.documentElement.setAttribute('data-report-complete', 'yes');
        }
      }, function(e){ report.errors.push(name + ': ' + e); });
    } catch (e) { report.errors.push(name + ': ' + e); jobs[name] = Promise.resolve(); }
    return jobs[name];
  }
  report.drawAll = function(){
    return Promise.all(divs.map(draw)).then(function(){ return report.errors.length; });
  };
  function opened(){
    report.readyMs = performance.now();  // since navigation start
    document.documentElement.setAttribute('data-report-ready',
                                          report.errors.length ? 'error' : 'ok');
  }
  if (!divs.length) { opened(); }
  else if (!('IntersectionObserver' in window)) { report.drawAll().then(opened); }
  else {
    var first = true;
    var io = new IntersectionObserver(function(entries){
      var now = entries.filter(function(e){ return e.isIntersecting; }).map(function(e){
        io.unobserve(e.target); return draw(e.target);
      });
      if (first) { first = false; Promise.all(now).then(opened); }
    }, {rootMargin: '200px 0px'});
    divs.forEach(function(d){ io.observe(d); });
  }
  window.addEventListener('beforeprint', function(){ report.drawAll(); });

  function key(td){
    var v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click', function(){
      var table = th.closest('table'), body = table.tBodies[0];
      var col = +th.dataset.col, asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){ h.classList.remove('asc','desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = key(a.cells[col]), y = key(b.cells[col]);
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        var c = x < y ? -1 : x > y ? 1 : 0;
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
})();
"""


def _figure_json(fig: Any) -> str:
    import plotly.io as pio

    # '</' would end the <script> block early; JSON allows the escaped form
    return pio.to_json(fig, validate=False).replace("</", "<\\/")


def _section_html(sec: Section) -> tuple[str, list[str]]:
    parts = [f'<section id="{sec.key}"><h2>{html.escape(sec.title)}</h2>']
    if sec.caption:
        parts.append(f'<p class="caption">{sec.caption}</p>')
    data: list[str] = []
    if sec.absent is not None:
        cmd = (
            f"<br>Produce it with {code(sec.command)}, then run the report again."
            if sec.command
            else ""
        )
        parts.append(
            f'<div class="absent-box"><b>Not available:</b> {html.escape(sec.absent)}{cmd}</div>'
        )
    else:
        if sec.html:
            parts.append(sec.html)
        for name, fig in sec.figures.items():
            div_id = f"fig-{name}"
            # the div has the figure's height before it is drawn: no jumps while scrolling
            height = int(getattr(fig.layout, "height", None) or 450)
            parts.append(
                f'<div class="plot" id="{div_id}" data-fig="{html.escape(name)}" '
                f'style="height:{height}px"></div>'
            )
            data.append(
                f'<script type="application/json" id="{div_id}-json">{_figure_json(fig)}</script>'
            )
    parts.append("</section>")
    return "".join(parts), data


def render_html(title: str, sections: Sequence[Section], *, subtitle: str = "") -> str:
    """The whole report page as one string (plotly.js inline)."""
    from plotly.offline import get_plotlyjs

    from groklab._version import __version__

    nav = "".join(
        f'<a href="#{s.key}"{" class=absent" if s.absent is not None else ""}>'
        f"{html.escape(s.title)}</a>"
        for s in sections
    )
    bodies, data = [], []
    for s in sections:
        b, d = _section_html(s)
        bodies.append(b)
        data.extend(d)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{html.escape(title)}</h1>"
        f'<div class="sub">{subtitle}</div></header>'
        f"<nav>{nav}</nav><main>{''.join(bodies)}</main>"
        f"<footer>groklab {html.escape(__version__)} · generated {stamp} · "
        "works offline: plotly.js is embedded</footer>"
        f"{''.join(data)}<script>{_JS}</script></body></html>"
    )


# --------------------------------------------------------------------------- static export
def write_static(
    figures: Mapping[str, Any],
    out_dir: Path,
    *,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Write every figure as ``out_dir/<name>.<format>`` with one renderer session.

    Uses kaleido 1.x, which drives a local Chrome or Chromium (found on ``PATH``, e.g.
    Debian's ``/usr/bin/chromium``; ``BROWSER_PATH`` picks another). Kaleido is called
    directly, not through ``plotly.io.write_images``, which drops the error of a figure that
    failed to render (a render timeout on a loaded machine, ...) and leaves its file missing.
    Each file is written beside its target and renamed into place.

    Raises:
        StaticExportError: kaleido or a browser is missing, or a figure failed to render
            (one line with the cause and the fix).
    """
    if not figures:
        return []
    try:
        import kaleido
    except ModuleNotFoundError:
        raise StaticExportError(
            "static figures need kaleido: pip install 'groklab[plot]'"
        ) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs, files, tmps = [], [], []
    for name, fig in figures.items():
        as_dict = fig.to_dict()
        for fmt in formats:
            files.append(out_dir / f"{name}.{fmt}")
            tmps.append(out_dir / f".{name}.{fmt}.tmp")
            opts = {
                "format": fmt,
                "width": STATIC_WIDTH,
                "height": int(fig.layout.height or 450),
                "scale": STATIC_SCALE if fmt == "png" else 1,
            }
            specs.append({"fig": as_dict, "path": tmps[-1], "opts": opts})
    try:
        errors = kaleido.write_fig_from_object_sync(specs, kopts={"timeout": STATIC_TIMEOUT_S})
    except Exception as e:  # kaleido/choreographer raise several types for a missing browser
        errors = (e,)
    missing = [f.name for t, f in zip(tmps, files, strict=True) if not t.exists()]
    if errors or missing:
        for t in tmps:
            t.unlink(missing_ok=True)
        e = errors[0] if errors else None
        text = str(e).strip() if e is not None else ""
        first = text.splitlines()[0] if text else type(e).__name__
        cause = f"{type(e).__name__}: {first}" if e is not None else f"{missing[0]} not rendered"
        raise StaticExportError(
            f"static figures not written ({cause}); install Chrome or "
            "Chromium (Debian: apt-get install chromium) or run `plotly_get_chrome`"
        )
    for t, f in zip(tmps, files, strict=True):
        t.replace(f)
    return files


def write_report(
    out: Path,
    title: str,
    sections: Sequence[Section],
    *,
    subtitle: str = "",
    static: bool = True,
    formats: Sequence[str] = ("png", "svg"),
) -> dict[str, Any]:
    """Write ``out`` (the HTML) and, if ``static``, the figures under ``out.parent/figures``.

    Returns:
        ``{"html": path, "figures": [paths], "static_error": message or None,
        "seconds": {"html": s, "static": s}}``. A static export failure does not lose the
        HTML: it is reported in ``static_error``.
    """
    from groklab.store import atomic_write_text

    out = Path(out)
    t0 = time.perf_counter()
    atomic_write_text(out, render_html(title, sections, subtitle=subtitle))
    t1 = time.perf_counter()
    figures = {
        f"{name}": fig for s in sections if s.absent is None for name, fig in s.figures.items()
    }
    files: list[Path] = []
    err = None
    if static:
        try:
            files = write_static(figures, out.parent / "figures", formats=formats)
        except StaticExportError as e:
            err = str(e)
    return {
        "html": out,
        "figures": files,
        "static_error": err,
        "seconds": {"html": t1 - t0, "static": time.perf_counter() - t1},
    }


def subtitle_line(*parts: str | None) -> str:
    """Join non-empty parts with a middle dot (escaped)."""
    return " · ".join(html.escape(p) for p in parts if p)
