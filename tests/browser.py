"""Headless Chromium for tests: load a local page, collect its console errors, take a screenshot.

    from tests.browser import chromium, load_page
    page = load_page(chromium(), Path("report.html"), Path("shot.png"))

It talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4, messages
separated by NUL), so it needs no Python package and opens no port. Console errors are console.error /
console.assert calls, uncaught exceptions and the browser's own error log (a resource that failed to load, a
Content-Security-Policy violation). ``chromium()`` installs the Debian package when it is missing and we are
root; otherwise it returns None and the caller fails the check.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
INSTALL_TIMEOUT_S = 900


def chromium(install: bool = True) -> str | None:
    """Path of a Chromium binary; with ``install``, apt-get installs it when missing (root only)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True, timeout=INSTALL_TIMEOUT_S)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            env=env,
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return shutil.which("chromium")


@dataclass
class PageResult:
    errors: list[str]  # console errors, uncaught exceptions, failed loads
    screenshot: Path | None
    values: dict[str, object] = field(default_factory=dict)  # results of ``evaluate`` expressions


class _Cdp:
    """Request/response and events over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds():  # in the child: Chromium reads commands on fd 3 and writes replies to fd 4
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # either may itself be 3 or 4
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            pass_fds=(3, 4),  # kept open past the preexec dup2
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self.events: list[dict] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))

    def _pull(self, deadline: float) -> dict:
        msg = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        if msg is None:
            raise RuntimeError("Chromium closed the debugging pipe")
        if "method" in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next += 1
        msg: dict = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._pull(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method:
                    return ev
            seen = len(self.events)
            self._pull(deadline)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._pull(deadline)
        except queue.Empty:
            pass

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, queue.Empty, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args}")
        elif ev["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
    return out


def load_page(
    binary: str,
    page: Path,
    screenshot: Path | None = None,
    *,
    width: int = 1400,
    height: int = 3000,
    evaluate: dict[str, str] | None = None,
    timeout: float = 60,
) -> PageResult:
    """Open ``page`` in a fresh headless profile, wait for its load event, run ``evaluate`` (name -> JS
    expression, JSON results), screenshot the top ``width`` x ``height`` pixels to ``screenshot``."""
    with tempfile.TemporaryDirectory(prefix="bindset-chromium-") as profile:
        cdp = _Cdp(binary, Path(profile))
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                cdp.call(f"{domain}.enable", session=sid)
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=sid,
            )
            cdp.call("Page.navigate", {"url": page.resolve().as_uri()}, session=sid, timeout=timeout)
            cdp.wait_event("Page.loadEventFired", timeout)
            cdp.drain(0.3)  # late console messages
            values = {}
            for name, expr in (evaluate or {}).items():
                r = cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
                if "exceptionDetails" in r:
                    raise RuntimeError(f"evaluate {name}: {r['exceptionDetails']}")
                values[name] = r["result"].get("value")
            if screenshot is not None:
                shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session=sid, timeout=timeout)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return PageResult(_errors(cdp.events), screenshot, values)
        finally:
            cdp.close()
