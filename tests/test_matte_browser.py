"""The VP9-with-alpha WebM of write_matte plays in headless Chromium over a checkerboard page,
and the page shows through where the matte is transparent (Chromium decodes VP9's alpha)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from birefnet_core.data import write_matte
from tests.browser import browser  # noqa: F401  (the Chromium fixture)

WIDTH, HEIGHT, FRAMES, FPS = 128, 96, 12, 12
SQUARE = 16                                 # checkerboard square, CSS pixels
OPAQUE = (0.9, 0.1, 0.1)                    # left third: opaque red
HALF = (0.1, 0.8, 0.1)                      # middle third: green at alpha 0.5
# VP9 is lossy (alpha PSNR ~52 dB in tests/test_matte_writer.py) and Chromium converts YUV to
# RGB in 8 bits: a pixel may be off by a few levels, never by the 255 of a lost alpha.
LEVELS = 12
PAGE = """<!doctype html><html><head><style>
html, body {{ margin: 0; background: #fff; }}
#board {{ position: absolute; left: 0; top: 0; width: {w}px; height: {h}px;
  background: url(board.png) no-repeat; }}
video {{ position: absolute; left: 0; top: 0; width: {w}px; height: {h}px; }}
</style></head><body><div id="board"></div>
<video id="clip" src="clip.webm" muted playsinline></video></body></html>"""


def matte_clip():
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.float32)
    alpha = np.zeros((FRAMES, HEIGHT, WIDTH), np.float32)
    third = WIDTH // 3
    frames[:, :, :third] = OPAQUE
    alpha[:, :, :third] = 1.0
    frames[:, :, third:2 * third] = HALF
    alpha[:, :, third:2 * third] = 0.5
    frames[:, :, 2 * third:] = (0.1, 0.1, 0.9)        # blue, fully transparent: never seen
    return frames, alpha


def checkerboard() -> np.ndarray:
    """(H, W) the page's background in [0, 1]: black where (x // 16 + y // 16) is even (a PNG,
    so that the page's pixels are known exactly)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return ((xx // SQUARE + yy // SQUARE) % 2).astype(np.float64)


def test_vp9_alpha_webm_shows_the_checkerboard_through_its_transparent_parts(browser, tmp_path):
    frames, alpha = matte_clip()
    write_matte(tmp_path / "clip", frames, alpha, format="webm_vp9_alpha", fps=FPS,
                premultiply=False)
    page_file = tmp_path / "page.html"
    page_file.write_text(PAGE.format(w=WIDTH, h=HEIGHT), encoding="utf-8")
    Image.fromarray((checkerboard() * 255).astype(np.uint8)).save(tmp_path / "board.png")
    page = browser.new_page()
    try:
        page.goto(page_file.as_uri())
        page.wait_for_function("document.getElementById('clip').readyState >= 2")
        page.evaluate("document.getElementById('clip').play()")
        page.wait_for_function("document.getElementById('clip').currentTime > 0.4")  # it plays
        page.evaluate("document.getElementById('clip').pause()")
        shot = page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
        page.evaluate("document.getElementById('clip').style.visibility = 'hidden'")
        board = page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
    finally:
        page.close()
    seen = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.float64)
    background = np.asarray(Image.open(io.BytesIO(board)).convert("RGB")).astype(np.float64)
    checker = checkerboard()[..., None] * 255
    assert np.abs(background - checker).max() == 0          # the page is the checkerboard
    third, inner = WIDTH // 3, slice(2, -2)                  # away from 4:2:0 chroma seams
    opaque = seen[:, :third][:, inner]
    half = seen[:, third:2 * third][:, inner]
    clear = seen[:, 2 * third:][:, inner]
    assert np.abs(opaque - np.array(OPAQUE) * 255).max() <= LEVELS
    expected_half = 0.5 * np.array(HALF) * 255 + 0.5 * checker[:, third:2 * third][:, inner]
    assert np.abs(half - expected_half).max() <= LEVELS
    assert np.abs(clear - checker[:, 2 * third:][:, inner]).max() <= LEVELS
