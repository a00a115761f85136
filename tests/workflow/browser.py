"""Snakemake's HTML report in headless Chromium: screenshots and their pixels.

Snakemake's ``report.html`` is a single-page app whose figures are PNGs embedded in
its ``results`` table (:func:`report_results`); a figure is shown by a script that
does what its eye button does (:func:`page_showing`), then Chromium takes the
screenshot (:func:`screenshot`).  The ``chromium`` fixture (tests/conftest.py)
finds the browser.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

#: Wide enough that the report's navigation bar leaves room for the widest figure
#: (the mosaics, 1359 px) at its own size, so pixels can be counted.
WINDOW = (1800, 900)
#: A pixel is "coloured" when its channels differ by this much (greys, white, black
#: and anti-aliased text do not).
CHROMA = 100


def report_results(report: Path) -> dict:
    """Return a report's embedded results table, keyed by file path."""
    html = Path(report).read_text()
    start = html.index("var results = {") + len("var results = ")
    table, _ = json.JSONDecoder().raw_decode(html, start)
    return table


def screenshot(chromium: str, page: Path, out: Path) -> np.ndarray:
    """Return Chromium's screenshot of a page, an (height, width, 3) uint8 array.

    The virtual time budget lets the report's scripts run to completion before
    the picture is taken; sRGB and a scale factor of 1 keep a PNG's pixels as they
    are.
    """
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--force-device-scale-factor=1",
        f"--user-data-dir={out.parent / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=10000",
        f"--screenshot={out}",
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def page_showing(report: Path, path: str, out: Path) -> Path:
    """Write a copy of report.html that shows `path` as its eye button does.

    A script calls ``app.setView`` with the embedded file once the app is up.
    """
    html = Path(report).read_text()
    script = (
        "<script>(function show() {"
        ' if (typeof app === "undefined" || !app) { setTimeout(show, 10); return; }'
        f" const path = {json.dumps(path)};"
        ' const kind = path.endsWith(".html") ? "html" : "img";'
        " app.setView({content: kind, contentPath: results[path].data_uri,"
        " resultPath: path});"
        "})();</script>"
    )
    head, body_end, tail = html.rpartition("</body>")
    out.write_text(head + script + body_end + tail)
    return out


def embedded_png(results: dict, path: str) -> np.ndarray:
    """Return a figure of the report, decoded from its data URI."""
    uri = results[path]["data_uri"]
    data = base64.b64decode(uri.split("base64,", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def coloured(image: np.ndarray) -> np.ndarray:
    """Return where pixels are coloured (not grey, white, black)."""
    image = image.astype(int)
    return image.max(axis=-1) - image.min(axis=-1) >= CHROMA


def dark(image: np.ndarray) -> np.ndarray:
    """Return where pixels are dark (text)."""
    return (image < 128).all(axis=-1)


def colour_counts(image: np.ndarray) -> dict[int, int]:
    """Return {0xRRGGBB: number of pixels} of an image."""
    packed = image.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    values, counts = np.unique(packed, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def rgb(key: int) -> np.ndarray:
    """Return the (3,) colour of a 0xRRGGBB key."""
    return np.array([key >> 16, key >> 8 & 255, key & 255])


def figure_shown(chromium: str, report: Path, path: str, tmp: Path) -> tuple[int, int]:
    """Return (coloured pixels on screen, coloured pixels in the PNG) of a figure.

    The figure's page is rendered; a pixel colour counts as shown up to as many
    times as the PNG has it.
    """
    figure = embedded_png(report_results(report), path)
    page = page_showing(report, path, tmp / "page.html")
    shot = screenshot(chromium, page, tmp / (Path(path).stem + ".png"))
    in_figure, on_screen = colour_counts(figure), colour_counts(shot)
    keys = [k for k in in_figure if coloured(rgb(k)[None, :])[0]]
    expected = sum(in_figure[k] for k in keys)
    shown = sum(min(on_screen.get(k, 0), in_figure[k]) for k in keys)
    return shown, expected
