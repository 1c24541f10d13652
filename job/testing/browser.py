"""A real headless Chromium, driven over the DevTools protocol, to look at a page as a reader
would: what it logs, what it fetches, what it says and what it looks like.

    with Browser() as browser:
        page = browser.render(Path("out/report.html"))
    page.console, page.requests, page.text, page.screenshot

No Chromium on the machine: the test is skipped, except under `CI=true`, where a missing
browser is a failure (the CI image is supposed to have one). The browser runs with a
throwaway profile and is always killed on exit.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import websocket

from job.testing.binaries import need_binary

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str:
    """The browser's path; skips the test without one (fails it under CI=true)."""
    return need_binary(BINARIES, "chromium")


@dataclass(frozen=True)
class Message:
    """A console message, an uncaught exception or a browser log entry."""

    level: str  # "error", "warning", "info", "log", "debug", "verbose"; "exception"
    text: str
    source: str  # "console", "exception", or the Log domain's source ("network", …)


@dataclass
class Rendered:
    console: list[Message] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # PNG
    load_s: float = 0.0  # navigation to the load event

    @property
    def errors(self) -> list[Message]:
        return [m for m in self.console if m.level in ("error", "exception")]


class Browser:
    """One headless Chromium and one page target of it, over one websocket."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.start_s = 0.0  # launch to DevTools ready
        self._proc: subprocess.Popen[str] | None = None
        self._profile = ""
        self._ws: websocket.WebSocket | None = None
        self._session = ""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        binary = find_chromium()
        started = time.monotonic()
        self._profile = tempfile.mkdtemp(prefix="sms-chromium-")
        self._proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: its helpers go with it
        )
        try:
            url = self._devtools_url()
            self._ws = websocket.create_connection(url, timeout=self.timeout_s)
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
            self._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise
        self.start_s = time.monotonic() - started
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Ask the browser to quit (it then ends its renderer and helpers), kill its process
        group if it has not within 5 s, and delete the profile."""
        if self._ws is not None:
            with contextlib.suppress(Exception):  # a browser already gone cannot answer
                self._ws.send(json.dumps({"id": 0, "method": "Browser.close"}))
            self._ws.close()
            self._ws = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)  # the group it was started in
            self._proc.wait(timeout=30)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = ""

    def _devtools_url(self) -> str:
        """The browser's websocket URL, from the line it prints on stderr; stderr is then
        drained by a thread, so a chatty browser never blocks on a full pipe."""
        assert self._proc is not None and self._proc.stderr is not None
        stderr, found, seen = self._proc.stderr, threading.Event(), []
        url: list[str] = []

        def read() -> None:
            for line in stderr:
                seen.append(line)
                match = _LISTENING.search(line)
                if match and not url:
                    url.append(match.group(1))
                    found.set()
            found.set()  # the browser exited

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(self.timeout_s) or not url:
            tail = "".join(seen[-20:])
            raise RuntimeError(f"Chromium did not start its DevTools server:\n{tail}")
        return url[0]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events met meanwhile are kept."""
        assert self._ws is not None, "the browser is not running"
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        reply: dict[str, Any] = json.loads(self._ws.recv())
        if "method" in reply:
            self._events.append(reply)
        return reply

    def _wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(e["method"] == method for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout_s} s")
            self._receive()

    def render(
        self, page: Path, width: int = 1280, height: int = 2000, full_page: bool = True
    ) -> Rendered:
        """Open `page` (a file) at `width` css pixels; the screenshot covers the whole page
        (at most 16000 px) with `full_page`, else the first `height` pixels."""
        self._events.clear()
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", **metrics)
        started = time.monotonic()
        self.call("Page.navigate", url=page.resolve().as_uri())
        self._wait_for("Page.loadEventFired")
        load_s = time.monotonic() - started
        text = self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )["result"].get("value", "")
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            height = min(16000, int(size["height"]) + 1)
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        rendered = Rendered(text=str(text), screenshot=base64.b64decode(shot["data"]))
        rendered.load_s = load_s
        for event in self._events:
            _record(rendered, event["method"], event.get("params", {}))
        return rendered

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value on the page last rendered (JSON-able)."""
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return found["result"].get("value")


def _record(page: Rendered, method: str, params: dict[str, Any]) -> None:
    if method == "Runtime.consoleAPICalled":
        args = params.get("args", [])
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
        page.console.append(Message(str(params.get("type", "log")), text, "console"))
    elif method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        described = details.get("exception", {}).get("description", "")
        page.console.append(Message("exception", described or details.get("text", ""), "exception"))
    elif method == "Log.entryAdded":
        entry = params.get("entry", {})
        text = f"{entry.get('text', '')} {entry.get('url', '')}".strip()
        page.console.append(Message(entry.get("level", "info"), text, entry.get("source", "")))
    elif method == "Network.requestWillBeSent":
        page.requests.append(params.get("request", {}).get("url", ""))
