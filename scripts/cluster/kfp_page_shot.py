"""One screenshot of a Kubeflow Pipelines UI page after a few clicks, as a person takes it: headless Chromium driven
over its DevTools protocol (on 127.0.0.1), each click on the element whose text is the one given.

    python scripts/cluster/kfp_page_shot.py URL OUT.png [--click TEXT ...] [--wait S]

kfp-screenshots.sh takes the pages that need no click; this takes the ones behind a click (a run graph's artifact
node, then its Visualization tab; a Compare page's metric tab)."""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# Clicks the innermost visible element whose own text is `text` (a graph node's label, a tab's title): the
# `nth` of them in page order (-1: the last).
CLICK = """((text, nth) => {
  const hits = [...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null &&
      e.textContent.trim() === text && ![...e.children].some(c => c.textContent.trim() === text));
  if (!hits.length) return false;
  const target = hits.at(nth);
  if (!target) return false;
  for (const type of ['mousedown', 'mouseup', 'click'])
    target.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true, view: window}));
  return true;
})(%s, %d)"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Page:
    def __init__(self, port: int):
        import websocket

        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as answer:
                    pages = [t for t in json.load(answer) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self.calls = 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--click", action="append", default=[],
                        help="text of an element to click, in order; TEXT@N clicks the N-th (from 0) of several")
    parser.add_argument("--wait", type=float, default=8, help="seconds after loading and after each click")
    parser.add_argument("--size", default="1600,1100")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kuberec-chromium-") as profile:
        browser = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={args.size}", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page = Page(port)
            page.call("Page.enable")
            page.call("Page.navigate", url=args.url)
            time.sleep(args.wait)
            for click in args.click:
                text, _, nth = click.rpartition("@") if "@" in click else (click, "", "-1")
                clicked = page.call("Runtime.evaluate", expression=CLICK % (json.dumps(text), int(nth)),
                                    returnByValue=True)
                if not clicked["result"].get("value"):
                    raise SystemExit(f"nothing on {args.url} reads {click!r}")
                time.sleep(args.wait)
            shot = page.call("Page.captureScreenshot", format="png")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(base64.b64decode(shot["data"]))
            print(args.out)
        finally:
            browser.terminate()
            browser.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
