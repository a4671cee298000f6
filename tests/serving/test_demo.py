"""The demo page against the real model server, rendered by a real headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image
from serving_helpers import MODEL, png_b64

from kuberec.serving.demo import start_demo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--window-size=1100,700", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def demo(model_server):
    page = start_demo(model_server.url, port=0)
    yield page
    page.stop()


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; `make setup` installs it (Debian package chromium)")
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def test_page_lists_served_models_and_similar_items(demo):
    with urllib.request.urlopen(f"{demo.url}/?item_id=4&k=5", timeout=60) as response:
        page = response.read().decode()
    assert MODEL in page
    items = re.findall(r'<figure class="(query|result)" data-item-id="(\d+)"', page)
    assert items[0] == ("query", "4") and len(items) == 6
    assert "4" not in [item for kind, item in items[1:]]
    assert page.count('src="data:image/png;base64,') == 6 and "distance 0." in page


def test_uploaded_image_and_bad_input_fragments(demo, catalog):
    images, _ = catalog
    request = urllib.request.Request(f"{demo.url}/similarity/answer", method="POST",
                                     data=json.dumps({"image_b64": "data:image/png;base64," + png_b64(images[8]),
                                                      "k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        fragment = response.read().decode()
    items = re.findall(r'data-item-id="(\d+)"', fragment)
    assert len(items) == 3 and items[0] == "8"
    with urllib.request.urlopen(f"{demo.url}/?item_id=987654", timeout=60) as response:
        assert "unknown item_id 987654" in response.read().decode()


def test_real_browser_shows_the_pictures(demo, tmp_path):
    url = f"{demo.url}/?item_id=10&k=5"
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,[A-Za-z0-9+/=]{40,}", dom.stdout)) == 6
    assert "query item 10" in dom.stdout
    shot = tmp_path / "page.png"
    done = chromium(tmp_path, f"--screenshot={shot}", url)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (700, 1100)
    # The page is light; the six thumbnails are light garments on black 112x112 squares.
    dark = (pixels < 20).mean()
    assert 6 * 112 * 112 * 0.3 / pixels.size < dark < 0.5, dark
    assert len(np.unique(pixels)) > 30
