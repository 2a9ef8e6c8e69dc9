"""birefnet_core.data.images: atomic PNG writes and the output names every command uses."""
from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from birefnet_core.data.images import output_paths, save_outputs, save_png_atomically


def test_outputs_get_the_names_and_permissions_of_any_new_file(tmp_path):
    rgb = Image.new("RGB", (8, 6), (10, 20, 30))
    mask = Image.new("L", (8, 6), 200)
    save_outputs(rgb, mask, tmp_path, "photo")
    mask_path, cutout_path = output_paths(tmp_path, "photo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_cutout.png", "photo_mask.png"]
    with Image.open(cutout_path) as cutout:
        assert cutout.mode == "RGBA" and cutout.getpixel((0, 0)) == (10, 20, 30, 200)
    probe = tmp_path / "probe"
    probe.write_bytes(b"")                       # what the user's umask gives a new file
    expected = stat.S_IMODE(probe.stat().st_mode)
    for path in (mask_path, cutout_path):
        assert stat.S_IMODE(path.stat().st_mode) == expected


class _Unsaveable(Image.Image):
    def save(self, *args, **kwargs):
        raise OSError("disk full")


def test_a_failed_write_leaves_neither_a_partial_file_nor_the_target(tmp_path):
    target = tmp_path / "x_mask.png"
    image = Image.new("L", (4, 4))
    image.__class__ = _Unsaveable
    with pytest.raises(OSError, match="disk full"):
        save_png_atomically(image, target)
    assert os.listdir(tmp_path) == []
