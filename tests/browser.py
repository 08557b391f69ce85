"""Headless Chromium driven through the DevTools protocol over a pipe (tests only).

``chromium --remote-debugging-pipe`` reads protocol commands from file descriptor 3 and writes
replies and events to descriptor 4, each message a JSON object ended by a NUL byte (the
transport Puppeteer's ``pipe: true`` uses). No port is opened and no Python package is needed
beyond the standard library. :class:`Browser` starts Debian's ``chromium`` with its networking
shut (a proxy that refuses, host names that never resolve, and the protocol's offline mode), a
fresh profile in a temporary folder, and collects console messages, exceptions and requests.

:func:`find_chromium` says where the browser is (``$DDPMLAB_CHROMIUM`` overrides the search).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    env = os.environ.get("DDPMLAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page (``with Browser() as b: b.open(url) ...``)."""

    def __init__(self, executable: str, width: int = 1200, height: int = 900,
                 timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="ddpmlab-chromium-")
        # ours -> chromium (its fd 3), chromium (its fd 4) -> ours
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        flags = [
            "--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            "--disable-default-apps", "--disable-features=Translate,MediaRouter",
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={self.profile}",
            "--hide-scrollbars", "--mute-audio", f"--window-size={width},{height}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        # bash puts our two pipe ends on descriptors 3 and 4, then becomes chromium (bash, not
        # sh: dash refuses descriptor numbers above 9)
        cmd = [shutil.which("bash") or "/bin/bash", "-c",
               f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}', executable, *flags]
        self._log = tempfile.TemporaryFile()  # chromium's own messages (read on failure)
        self.proc = subprocess.Popen(cmd, pass_fds=(to_child_r, from_child_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            self._attach(width, height)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise BrowserError(f"chromium closed the pipe (exit {self.proc.poll()}): "
                                   f"{err.strip()[-2000:]}")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        """Send one command (to the page unless ``browser``) and return its result."""
        ident = self._send(method, params, None if browser else self.session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        """The first event ``method`` not yet seen (already collected, or arriving)."""
        for ev in self.events:
            if ev["method"] == method and not ev.get("_seen"):
                ev["_seen"] = True
                return ev
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read_message(deadline)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    msg["_seen"] = True
                    return msg

    def _attach(self, width: int, height: int) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        att = self.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                  "flatten": True}, browser=True)
        self.session = att["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # ------------------------------------------------------------------ page
    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image of the page is loaded then)."""
        res = self.call("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"{url}: {res['errorText']}")
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises are awaited); its JSON value."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def press(self, key: str, code: str, key_code: int) -> None:
        """A real key press (down and up) on the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                 "windowsVirtualKeyCode": key_code,
                                                 "nativeVirtualKeyCode": key_code})

    def screenshot(self, clip: dict | None = None, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.js("({w: document.documentElement.scrollWidth, "
                           "h: document.documentElement.scrollHeight})")
            clip = {"x": 0, "y": 0, "width": size["w"], "height": size["h"]}
            params["captureBeyondViewport"] = True
        if clip is not None:   # page coordinates; the region may lie outside the viewport
            params["clip"] = {**clip, "scale": 1}
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    # ------------------------------------------------------------------ what happened
    def console_errors(self) -> list[str]:
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                         for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [ev["params"]["request"]["url"] for ev in self.events
                if ev["method"] == "Network.requestWillBeSent"]

    def failed_requests(self) -> list[str]:
        ids = {ev["params"]["requestId"]: ev["params"]["request"]["url"] for ev in self.events
               if ev["method"] == "Network.requestWillBeSent"}
        return [f"{ids.get(ev['params']['requestId'], '?')}: {ev['params'].get('errorText')}"
                for ev in self.events if ev["method"] == "Network.loadingFailed"]

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close")
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
