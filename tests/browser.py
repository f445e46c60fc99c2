"""A page opened in headless Chromium over the DevTools protocol: its console errors, images and a screenshot.

Chromium speaks the protocol on file descriptors 3 (commands in) and 4 (replies and events out) with
`--remote-debugging-pipe`, one JSON message per NUL-terminated frame: no websocket, no client library.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"
# Every <img>, and whether it decoded: a broken one has naturalWidth 0 once the page has loaded.
IMAGES = "JSON.stringify(Array.from(document.images, i => [i.alt, i.complete ? i.naturalWidth : 0]))"


@dataclass
class Page:
    """What loading one page showed: console errors and exceptions, each <img> (alt, natural width), a screenshot."""

    errors: list[str]
    images: list[tuple[str, int]]
    screenshot: Path

    @property
    def broken(self) -> list[str]:
        """The alt text of every image that did not decode."""
        return [alt for alt, width in self.images if width <= 0]


def available() -> bool:
    """Whether Debian's chromium is installed."""
    return shutil.which(CHROMIUM) is not None


class DevTools:
    """A DevTools session over Chromium's pipe: send a command, wait for its reply, keep the events meanwhile."""

    def __init__(self, to_chrome: int, from_chrome: int):
        self.to_chrome, self.from_chrome = to_chrome, from_chrome
        self.buffer, self.events, self.last_id = b"", [], 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send METHOD with PARAMS (to SESSION, a page, or to the browser) and return its result."""
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        while (reply := self.read()).get("id") != self.last_id:
            self.events.append(reply)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def read(self) -> dict[str, Any]:
        """The next message from Chromium."""
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str) -> None:
        """Read on until the event METHOD has come."""
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.read())


def open_page(html: Path, screenshot: Path, size: tuple[int, int] = (1280, 4000)) -> Page:
    """Load HTML in headless Chromium: its console errors and uncaught exceptions, its images, a PNG screenshot."""
    commands, chrome_reads = os.pipe()[::-1]  # (write end, read end)
    chrome_writes, replies = os.pipe()[::-1]
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            f"--user-data-dir={screenshot.parent / 'chromium-profile'}", f"--window-size={size[0]},{size[1]}"]
    # Chromium wants the pipe on fds 3 and 4 exactly: the shell puts it there.
    proc = subprocess.Popen(["bash", "-c", f'exec {CHROMIUM} "$@" 3<&{chrome_reads} 4>&{chrome_writes}', CHROMIUM,
                             *args], pass_fds=(chrome_reads, chrome_writes), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(chrome_reads)
    os.close(chrome_writes)  # only Chromium holds the write end: its exit ends our reads
    try:
        return _load(DevTools(commands, replies), html.resolve().as_uri(), screenshot)
    finally:
        os.close(commands)
        os.close(replies)
        proc.kill()
        proc.wait()


def _load(dev: DevTools, url: str, screenshot: Path) -> Page:
    """Open URL in a new tab with the console listened to, wait for its load event, and look at it."""
    target = dev.call("Target.createTarget", url="about:blank")["targetId"]
    tab = dev.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        dev.call(f"{domain}.enable", tab)
    dev.call("Page.navigate", tab, url=url)
    dev.wait_for("Page.loadEventFired")
    images = json.loads(dev.call("Runtime.evaluate", tab, expression=IMAGES, returnByValue=True)["result"]["value"])
    screenshot.write_bytes(base64.b64decode(dev.call("Page.captureScreenshot", tab, format="png")["data"]))
    return Page(_errors(dev.events), [(alt, int(w)) for alt, w in images], screenshot)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """The console errors, uncaught exceptions and browser errors (a resource that failed to load) among EVENTS."""
    found = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            found.append(p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"]["text"])
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
            found.append(p["entry"].get("text", ""))
    return found
