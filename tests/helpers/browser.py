"""A minimal headless-Chromium driver (Chrome DevTools Protocol) to test and time reports.

:func:`inspect_page` opens an HTML file over ``file://`` in a fresh headless Chromium with
the network blocked, waits until the report marks itself drawn, and returns what a test
needs: console errors and uncaught exceptions, every network request that left the page,
each plot's trace and point counts as plotly.js holds them, the load time, and optionally a
full-page screenshot. It speaks the DevTools protocol over one websocket (the
``websocket-client`` package, in the ``dev`` extra) and needs no downloaded browser:
Debian's ``chromium`` (``/usr/bin/chromium``) or any Chrome on ``PATH``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groklab.errors import GroklabError

__all__ = ["BrowserError", "PageResult", "find_chromium", "inspect_page", "launch"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Flags for a quiet, offline, disposable browser. The proxy and resolver rules block every
# request that is not to a file or to loopback; the DevTools socket is unaffected.
_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-port=0",
)

# What the page reports about itself once drawn (the report's own readiness flag + plotly's
# in-memory figures).
_PROBE = r"""
(function(){
  var r = window.groklabReport || {};
  return JSON.stringify({
    ready: document.documentElement.getAttribute('data-report-ready'),
    readyMs: r.readyMs === undefined ? null : r.readyMs,
    completeMs: r.completeMs === undefined ? null : r.completeMs,
    errors: r.errors || [],
    plots: Array.prototype.map.call(document.querySelectorAll('div.plot[data-fig]'), function(d){
      // _fullData: plotly's processed traces, with base64 arrays decoded to typed arrays
      var n = 0, traces = (d._fullData || []);
      traces.forEach(function(t){
        var m = 0;
        ['x', 'y', 'z'].forEach(function(k){
          var a = t[k]; if (!a || typeof a.length !== 'number') return;
          var c = 0;
          for (var i = 0; i < a.length; i++) {
            c += (a[i] && typeof a[i] === 'object' && typeof a[i].length === 'number')
                 ? a[i].length : 1;
          }
          m = Math.max(m, c);
        });
        n += m;
      });
      return {fig: d.getAttribute('data-fig'), traces: (d.data || []).length, points: n,
              drawn: !!d.querySelector('svg.main-svg')};
    })
  });
})()
"""


class BrowserError(GroklabError):
    """No browser, or the browser failed / timed out."""


@dataclass
class PageResult:
    """What a page did when opened.

    Attributes:
        url: the page.
        ready: the page's ``data-report-ready`` value (``"ok"``, ``"error"`` or ``None``).
        load_seconds: from navigation to *opened* (the first screen's figures drawn; the
            rest are drawn as they scroll into view), measured outside the page.
        complete_seconds: from navigation until every figure was drawn (the rest are drawn
            right after opening, as if the reader scrolled through at once).
        ready_ms, complete_ms: the page's own ``performance.now()`` (milliseconds since
            navigation start) at those two moments.
        plots: per plot div: ``fig`` (its name), ``traces`` (in ``div.data``), ``points``
            (values in plotly's processed traces), ``drawn`` (an SVG was made).
        console_errors: console ``error``/``assert`` messages, uncaught exceptions and
            browser log errors.
        requests: URLs of requests other than ``file:``/``data:``/``blob:``.
        page_errors: the report's own list of figures that failed to draw.
        screenshot: path of the saved screenshot, if asked for.
        cpu: the renderer's busy time in seconds by kind, from the DevTools
            ``Performance`` domain (``TaskDuration`` = all main-thread work, ``ScriptDuration``,
            ``LayoutDuration``, ...; wall time of the renderer's tasks) and
            ``cpu_open/<process type>`` / ``cpu_complete/<process type>``: CPU seconds each
            kind of browser process used until opened / complete. ``cpu_open/renderer`` is
            the page's own cost (parsing, scripts, layout, painting) whatever else the
            machine is doing, unlike the wall-clock times; on a busy machine the browser and
            GPU processes also burn CPU in proportion to the wall time (frame ticks).
    """

    url: str
    ready: str | None
    load_seconds: float
    complete_seconds: float
    ready_ms: float | None
    complete_ms: float | None
    plots: list[dict[str, Any]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    cpu: dict[str, float] = field(default_factory=dict)


def find_chromium() -> str | None:
    """Path of a Chrome/Chromium: ``$BROWSER_PATH``, else the first of the usual names on
    ``PATH``."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in _CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


class _CDP:
    """Request/response over one DevTools websocket; events are kept in ``self.events``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        import websocket

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"browser did not answer {method} within {timeout:.0f} s")
            self.ws.settimeout(left)
            try:
                m = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error'].get('message')}")
                return m.get("result", {})
            self.events.append(m)

    def pump(self, seconds: float, *, until: str | None = None) -> bool:
        """Read events for ``seconds``, or until an event named ``until`` arrives (then
        ``True``)."""
        import websocket

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                m = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                return False
            self.events.append(m)
            if until is not None and m.get("method") == until:
                return True
        return False


@contextlib.contextmanager
def launch(
    *, executable: str | None = None, width: int = 1280, height: int = 900, timeout: float = 30
) -> Iterator[tuple[_CDP, str, int]]:
    """A fresh headless Chromium with the network blocked: yields ``(cdp, session_id, pid)``
    of one blank page (``pid``: the browser's process group). The browser and its profile are
    removed afterwards."""
    try:
        import websocket
    except ModuleNotFoundError:
        raise BrowserError(
            "driving Chromium needs websocket-client: pip install 'groklab[dev]'"
        ) from None
    exe = executable or find_chromium()
    if exe is None:
        raise BrowserError(
            "no Chrome/Chromium found (Debian: apt-get install chromium; or set BROWSER_PATH)"
        )
    profile = tempfile.mkdtemp(prefix="groklab-chromium-")
    args = [exe, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    args.append("about:blank")
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    ws = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise BrowserError(f"{exe} exited at start: {err[-1] if err else proc.returncode}")
            if time.monotonic() > deadline:
                raise BrowserError(f"{exe} did not open its DevTools port in {timeout:.0f} s")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True
        )
        cdp = _CDP(ws)
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        yield cdp, session, proc.pid
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def _group_cpu_seconds(pgid: int) -> dict[str, float]:
    """User + system CPU seconds of the live processes in process group ``pgid`` by Chromium
    process type (``browser``, ``renderer``, ``gpu-process``, ...). Linux only (``/proc``);
    empty elsewhere."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        # fields after the command: state ppid pgrp session ... utime(12) stime(13)
        if int(fields[2]) != pgid:
            continue
        # Chromium rewrites its children's argv into one string: search it for --type=
        m = re.search(rb"--type=([a-z-]+)", cmd)
        kind = m.group(1).decode() if m else "browser"
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}


def _console_errors(events: list[dict[str, Any]], session: str) -> list[str]:
    out = []
    for e in events:
        if e.get("sessionId") not in (None, session):
            continue
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
    return out


def _requests(events: list[dict[str, Any]]) -> list[str]:
    urls = []
    for e in events:
        if e.get("method") == "Network.requestWillBeSent":
            url = e["params"]["request"]["url"]
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                urls.append(url)
    return urls


def _evaluate(cdp: _CDP, session: str, expr: str, *, timeout: float = 30) -> Any:
    res = cdp.call(
        "Runtime.evaluate",
        {"expression": expr, "returnByValue": True, "awaitPromise": True},
        session=session,
        timeout=timeout,
    )
    if "exceptionDetails" in res:
        raise BrowserError(f"script failed: {res['exceptionDetails'].get('text')}")
    return res.get("result", {}).get("value")


def inspect_page(
    html_path: str | Path,
    *,
    screenshot: str | Path | None = None,
    timeout: float = 30.0,
    settle: float = 0.3,
    script: str | None = None,
    executable: str | None = None,
    instrument: bool = True,
) -> PageResult | tuple[PageResult, Any]:
    """Open ``html_path`` over file:// in a fresh offline headless Chromium and report.

    Args:
        html_path: the report.
        screenshot: where to save a full-page PNG screenshot (``None`` = none).
        timeout: seconds to wait for the page to mark itself drawn.
        settle: seconds to keep collecting console events after it is drawn.
        script: optional JavaScript expression evaluated after the page is drawn (may return
            a promise); its value is returned alongside the result.
        executable: the browser (default: :func:`find_chromium`).
        instrument: collect console errors, network requests and renderer metrics (the
            DevTools Runtime/Log/Network/Performance domains). ``False`` for timing only:
            the inspector makes the page itself slower.

    Returns:
        The :class:`PageResult`, or ``(result, script value)`` when ``script`` is given.
    """
    url = Path(html_path).resolve().as_uri()
    with launch(executable=executable, timeout=timeout) as (cdp, session, pid):
        # the inspector domains cost the page CPU (V8 keeps more debug data): timing runs
        # (instrument=False) enable only Page, which navigation events need
        domains = ("Runtime", "Log", "Page", "Network", "Performance") if instrument else ("Page",)
        for domain in domains:
            cdp.call(f"{domain}.enable", session=session)
        cpu0 = _group_cpu_seconds(pid)
        t0 = time.perf_counter()
        cdp.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
        # the load event comes after the inline scripts (plotly.js, the figure drawing) ran
        if not cdp.pump(timeout, until="Page.loadEventFired"):
            raise BrowserError(f"{url}: page did not load within {timeout:.0f} s")
        left = max(1.0, timeout - (time.perf_counter() - t0))
        ready = _evaluate(
            cdp,
            session,
            "new Promise(function(resolve){ (function poll(){"
            " var v = document.documentElement.getAttribute('data-report-ready');"
            " if (v) resolve(v); else setTimeout(poll, 10); })(); })",
            timeout=left,
        )
        load = time.perf_counter() - t0
        cpu_open = _cpu_delta(_group_cpu_seconds(pid), cpu0)
        # then draw the figures further down (drawn on scroll in normal use)
        _evaluate(
            cdp,
            session,
            "window.groklabReport && window.groklabReport.drawAll "
            "? window.groklabReport.drawAll() : 0",
            timeout=timeout,
        )
        complete = time.perf_counter() - t0
        cpu_complete = _cpu_delta(_group_cpu_seconds(pid), cpu0)
        perf = (
            cdp.call("Performance.getMetrics", session=session).get("metrics", [])
            if instrument
            else []
        )
        cpu = {m["name"]: float(m["value"]) for m in perf if m["name"].endswith("Duration")}
        for kind, v in cpu_open.items():
            cpu[f"cpu_open/{kind}"] = v
        for kind, v in cpu_complete.items():
            cpu[f"cpu_complete/{kind}"] = v
        cdp.pump(settle)
        probe = json.loads(_evaluate(cdp, session, _PROBE))
        shot = None
        if screenshot is not None:
            metrics = cdp.call("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            w, h = int(size["width"]), int(min(size["height"], 16000))
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            cdp.pump(0.5)  # let responsive plots re-layout to the new size
            data = cdp.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True},
                session=session,
                timeout=60,
            )["data"]
            shot = Path(screenshot)
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(data))
        # the script (e.g. hover, zoom) runs after the screenshot, which shows the page as opened
        extra = _evaluate(cdp, session, script, timeout=timeout) if script else None
        cdp.pump(0.05)
        result = PageResult(
            url=url,
            ready=ready,
            load_seconds=load,
            complete_seconds=complete,
            ready_ms=probe.get("readyMs"),
            complete_ms=probe.get("completeMs"),
            plots=probe["plots"],
            console_errors=_console_errors(cdp.events, session),
            requests=_requests(cdp.events),
            page_errors=probe["errors"],
            screenshot=shot,
            cpu=cpu,
        )
    return (result, extra) if script else result
