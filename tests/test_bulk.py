"""``birefnet_core.bulk`` on a local Ray (2 CPUs): the CLI's outputs, resumption after a kill,
bad inputs reported, the sources SRC may name. Synthetic PVT-v2-b0 weights, small images."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
import ray
import torch
from PIL import Image
from safetensors.torch import save_file

from birefnet_core import estimate_foreground, load_model
from birefnet_core.bulk import BulkError, run
from birefnet_core.bulk.manifest import COLUMNS, Manifest
from birefnet_core.bulk.pipeline import INSTALL_HINT
from birefnet_core.bulk.sources import list_sources, stem_of
from birefnet_core.bulk.stages import MaskPredictor, objects, read_bytes
from birefnet_core.cli import main as cli_main
from birefnet_core.data.images import output_paths
from birefnet_core.errors import InputError
from tests.synthetic import synthetic_float_weights

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny_pvt.safetensors"
    save_file({k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()},
              str(path))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's in-process runs (run() uses it and leaves it running)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def _photos(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    """Images of different sizes and modes (RGB, RGBA, grey, palette)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        seed = first_seed + index
        height, width = 48 + 13 * (seed % 5), 64 + 9 * (seed % 7)
        kind = seed % 4
        path = folder / f"photo{seed:03d}.{'jpg' if kind == 0 else 'png'}"
        if kind == 1:
            Image.fromarray(_noise(height, width, 4, seed), "RGBA").save(path)
        elif kind == 2:
            Image.fromarray(_noise(height, width, 1, seed)[..., 0], "L").save(path)
        elif kind == 3:
            Image.fromarray(_noise(height, width, 3, seed), "RGB").quantize(16).save(path)
        else:
            Image.fromarray(_noise(height, width, 3, seed), "RGB").save(path, quality=90)
        paths.append(path)
    return paths


def _manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_bulk_outputs_equal_the_cli(local_ray, checkpoint: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 7)
    assert cli_main([str(tmp_path / "in"), "-o", str(tmp_path / "cli"), "--model", str(checkpoint),
                     "--resolution", str(RESOLUTION), "--device", "cpu"]) == 0
    summary = run(tmp_path / "in", tmp_path / "bulk", model=str(checkpoint), resolution=RESOLUTION,
                  batch_size=3, actors=2, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (7, 0, 0)
    for photo in photos:
        for kind in ("mask", "cutout"):
            name = f"{photo.stem}_{kind}.png"
            ours, theirs = _pixels(tmp_path / "bulk" / name), _pixels(tmp_path / "cli" / name)
            assert ours.shape == theirs.shape, name
            # Within 1/255, not byte for byte: the bulk actor runs three images of different
            # sizes in one forward with its own thread count, the CLI one image at a time. Both
            # resize, normalise and resize back with the same functions, so the masks differ
            # only by float rounding of the network, which can move a value across an 8-bit
            # rounding boundary: at most one level.
            difference = np.abs(ours.astype(int) - theirs.astype(int))
            assert difference.max() <= 1, name
            if kind == "cutout":
                assert np.array_equal(ours[..., :3], theirs[..., :3]), name  # same decoding
    rows = _manifest(summary.manifest)
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in photos)
    assert all(row["status"] == "done" and not row["error"] for row in rows)
    sizes = {row["path"]: (int(row["width"]), int(row["height"])) for row in rows}
    for photo in photos:
        with Image.open(photo) as image:
            assert sizes[str(photo.resolve())] == image.size


def test_refine_foreground_and_detail(local_ray, checkpoint: Path, tmp_path: Path) -> None:
    from birefnet_core.inference.detail import refine_detail

    photo = tmp_path / "in" / "wide.png"
    photo.parent.mkdir()
    Image.fromarray(_noise(150, 230, 3, 7), "RGB").save(photo)
    # One image, and the actor with this process's thread count: the coarse pass is the same
    # computation on both sides, so the uncertain band the detail pass refines is the same.
    summary = run(photo, tmp_path / "out", model=str(checkpoint), resolution=64, detail=True,
                  refine_foreground=True, threads_per_actor=torch.get_num_threads(),
                  progress=False)
    assert summary.done == 1, summary.text()
    model = load_model(checkpoint)
    image = torch.from_numpy(_pixels(photo).astype(np.float32) / 255).permute(2, 0, 1)[None]
    mask = refine_detail(model, image, resolution=64, tile_size=64)
    expected_mask = np.round(mask[0, 0].numpy() * 255)
    ours = _pixels(tmp_path / "out" / "wide_mask.png").astype(float)
    # Network rounding (see above) moves the coarse mask by at most one level before the
    # detail pass; the tiles then see the same pixels: 1/255 holds for the refined mask too.
    assert np.abs(ours - expected_mask).max() <= 1
    foreground = estimate_foreground(image, torch.from_numpy(ours / 255.0).float()[None, None])
    cutout = _pixels(tmp_path / "out" / "wide_cutout.png").astype(float)
    assert np.array_equal(cutout[..., 3], ours)
    # Colours estimated from a mask that may differ by 1/255 in places; the estimate is a
    # smooth function of alpha away from alpha = 0, so they agree to a few levels, and the
    # plain image (no estimation) differs far more in the soft region.
    estimated = foreground[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(cutout[..., :3] - estimated).mean() < 1.0
    assert np.abs(cutout[..., :3] - _pixels(photo)).mean() > 5.0


def test_corrupt_and_non_images_are_reported(local_ray, checkpoint: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 3)
    whole = (tmp_path / "in" / photos[1].name).read_bytes()
    (tmp_path / "in" / "broken.png").write_bytes(whole[:len(whole) // 2])   # a cut-off download
    (tmp_path / "in" / "notes.jpg").write_text("a text file with an image suffix")
    (tmp_path / "in" / "readme.txt").write_text("left out: not an image suffix")
    summary = run(tmp_path / "in", tmp_path / "out", model=str(checkpoint), resolution=64,
                  batch_size=2, progress=False)
    assert (summary.done, summary.failed) == (3, 2)
    errors = dict(summary.failures)
    assert "truncated" in errors[str((tmp_path / "in" / "broken.png").resolve())].lower()
    assert "not an image file" in errors[str((tmp_path / "in" / "notes.jpg").resolve())]
    assert summary.ignored == [str((tmp_path / "in" / "readme.txt").resolve())]
    rows = {row["path"]: row for row in _manifest(summary.manifest)}
    assert len(rows) == 5 and rows[str((tmp_path / "in" / "notes.jpg").resolve())]["status"] == "failed"
    for photo in photos:
        assert (tmp_path / "out" / f"{photo.stem}_cutout.png").is_file()
    assert not any((tmp_path / "out").glob("broken*")) and not any((tmp_path / "out").glob("notes*"))
    # A list of paths: every entry is taken, relative ones from the list's folder.
    listed = tmp_path / "list.txt"
    listed.write_text(f"# photos\nin/{photos[0].name}\n\nin/readme.txt\n{tmp_path / 'absent.png'}\n")
    again = run(listed, tmp_path / "out", model=str(checkpoint), resolution=64, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 1, 2)
    assert "No such file" in dict(again.failures)[str((tmp_path / "absent.png").resolve())]


def test_a_failing_batch_is_retried_image_by_image(checkpoint: Path) -> None:
    class RunsOutOnOddSizes(MaskPredictor):
        def cutouts(self, images):
            if any(image.shape[:2] == (13, 17) for image in images):
                raise RuntimeError("out of memory (a stand-in)")
            return super().cutouts(images)

    actor = RunsOutOnOddSizes(str(checkpoint), resolution=64)
    images = [_noise(20, 30, 3, 1), _noise(13, 17, 3, 2), _noise(25, 21, 3, 3), _noise(9, 9, 3, 4)]
    batch = {"path": np.array(["a", "b", "c", "d"], dtype=object), "stem": np.array(list("abcd")),
             "image": objects(images), "error": np.array(["", "", "", "earlier"], dtype=object),
             "bytes": np.zeros(4), "width": np.zeros(4), "height": np.zeros(4),
             "read_s": np.zeros(4)}
    result = actor(batch)
    failure = "cannot segment the image: RuntimeError: out of memory (a stand-in)"
    assert list(result["error"]) == ["", failure, "", "earlier"]
    for index in (0, 2):             # the others were masked, alone, as they would have been
        mask, _ = actor.cutouts([images[index]])[0]
        assert np.array_equal(result["mask"][index], mask)
        assert np.array_equal(result["image"][index], images[index])
    assert result["infer_s"][1] == 0 and result["infer_s"][3] == 0


def _kill_session(session: int) -> None:
    """SIGKILL every process of a session (Ray's workers have process groups of their own, so
    killing the driver's group would leave them running); wait until they are gone."""
    def members() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
                state = stat.rsplit(")", 1)[-1].split()[0] if stat else "Z"
                if state != "Z" and os.getsid(int(entry)) == session:   # zombies are dead
                    found.append(int(entry))
            except OSError:          # exited meanwhile
                pass
        return found
    deadline = time.monotonic() + 30
    while (alive := members()) and time.monotonic() < deadline:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    assert not members(), "processes of the killed run survived"


def _finished(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}


def test_killed_run_resumes_each_image_once(local_ray, checkpoint: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "birefnet_core.bulk", "--input", str(tmp_path / "in"),
               "--output", str(out), "--model", str(checkpoint), "--resolution", str(RESOLUTION),
               "--num-cpus", "2", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list(out.glob("*_cutout.png"))) < 4 and process.poll() is None:
        assert time.monotonic() < deadline, "the first run wrote nothing in 240 s"
        time.sleep(0.05)
    _kill_session(process.pid)               # the driver, its local Ray and its workers
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-3000:]
    before = _finished(out)
    whole = {name[:-len("_cutout.png")] for name in before if name.endswith("_cutout.png")}
    whole &= {name[:-len("_mask.png")] for name in before if name.endswith("_mask.png")}
    assert 4 <= len(whole) < len(photos), "the kill should land midway"

    summary = run(tmp_path / "in", out, model=str(checkpoint), resolution=RESOLUTION,
                  progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (len(photos) - len(whole),
                                                               len(whole), 0)
    after = _finished(out)
    for stem in whole:            # done once: the first run's outputs were not written again
        for kind in ("mask", "cutout"):
            assert after[f"{stem}_{kind}.png"] == before[f"{stem}_{kind}.png"]
    assert sorted(after) == sorted(f"{p.stem}_{kind}.png" for p in photos
                                   for kind in ("cutout", "mask"))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "partial files left behind"
    for name in after:
        assert _pixels(out / name).size > 0               # every file decodes in full
    rows = _manifest(summary.manifest)
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in photos)
    by_stem = {Path(row["path"]).stem: row for row in rows}
    latest = max(row["run"] for row in rows)
    redone = {stem for stem, row in by_stem.items() if row["run"] == latest and row["status"] == "done"}
    assert redone == {p.stem for p in photos} - whole
    # "found": written by the killed run, which died before recording them.
    found = {stem for stem, row in by_stem.items() if row["status"] == "found"}
    assert found <= whole
    assert all(row["status"] == "done" for stem, row in by_stem.items() if stem not in found)


def test_sources(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "a", 2) + _photos(tmp_path / "a" / "b", 1, first_seed=5)
    (tmp_path / "a" / "notes.txt").write_text("x")
    top = sorted(str(p.resolve()) for p in photos[:2])
    assert list_sources(str(tmp_path / "a")) == (top, [str((tmp_path / "a" / "notes.txt").resolve())])
    everything = sorted(str(p.resolve()) for p in photos)
    assert list_sources(str(tmp_path / "a" / "**" / "*.[jp][pn]g"))[0] == everything
    uri = (tmp_path / "a").resolve().as_uri()      # file:// goes through pyarrow like s3://
    assert list_sources(uri)[0] == [(tmp_path / "a").resolve().as_uri() + "/" + Path(p).name
                                    for p in top]
    assert read_bytes(list_sources(uri)[0][0]) == photos[0].read_bytes()
    (tmp_path / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / f"{photos[0].stem}.png")
    with pytest.raises(InputError, match="same name"):
        list_sources(str(tmp_path / "**" / "*"))
    with pytest.raises(InputError, match="no images"):
        list_sources(str(tmp_path / "c" / "*.jpg"))
    with pytest.raises(InputError, match="no such"):
        list_sources(str(tmp_path / "absent"))
    with pytest.raises(InputError, match="holds input images"):       # before Ray is needed
        run(tmp_path / "a", tmp_path / "a", progress=False)


def test_a_recursive_pattern_leaves_out_the_output_folder_inside_it(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "a", 1) + _photos(tmp_path / "a" / "b", 1, first_seed=5)
    out = tmp_path / "a" / "cutouts"              # outputs of an earlier run, inside the tree
    out.mkdir()
    for suffix in ("_mask", "_cutout"):
        Image.new("L", (8, 8)).save(out / f"{photos[0].stem}{suffix}.png")
    pattern = str(tmp_path / "a" / "**" / "*")
    images, ignored = list_sources(pattern, output=out)
    assert images == sorted(str(p.resolve()) for p in photos)
    assert sorted(Path(f).name for f in ignored) == sorted(p.name for p in out.iterdir())
    # Without the output folder the pattern takes the earlier outputs as inputs.
    assert len(list_sources(pattern)[0]) == len(images) + 2
    with pytest.raises(InputError, match="holds input images"):   # outputs among the inputs
        run(str(out / "*.png"), out, progress=False)


def test_uri_names_cannot_lead_outputs_out_of_the_output_folder() -> None:
    folder = PureWindowsPath("C:/out")
    for uri in ("s3://bucket/a\\..\\..\\evil.png", "s3://bucket/C:evil.png",
                "gs://bucket/dir/x\\y.jpg", "s3://bucket/a|b?.png"):
        for path in output_paths(folder, stem_of(uri)):
            assert path.parent == folder, (uri, path)
    assert stem_of("s3://bucket/dir/photo.v2.jpg") == "photo.v2"    # ordinary names unchanged


def test_manifest_survives_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    with Manifest(path) as book:
        book.record([{"path": "/x/a.png", "status": "done", "read_s": 0.5},
                     {"path": "/x/b.png", "status": "failed", "error": 'bad, "quoted"\nline'}])
    with open(path, "a", encoding="utf-8") as stream:
        stream.write("/x/c.png,do")                      # a run killed mid-line
    book = Manifest(path)
    assert sorted(book.rows) == ["/x/a.png", "/x/b.png"]
    assert book.rows["/x/b.png"]["error"] == 'bad, "quoted"\nline'
    with book:
        pass
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    assert [row["path"] for row in _manifest(path)] == ["/x/a.png", "/x/b.png"]


def test_missing_ray_says_how_to_install(checkpoint: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _photos(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    with pytest.raises(BulkError) as error:
        run(tmp_path / "in", tmp_path / "out", model=str(checkpoint), progress=False)
    assert str(error.value) == INSTALL_HINT
    without_ray = ("import sys; sys.modules['ray'] = None; "
                   "from birefnet_core.bulk.command import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", without_ray, "--input", str(tmp_path / "in"),
                             "--output", str(tmp_path / "out"), "--model", str(checkpoint)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and 'pip install "ray[data]"' in result.stderr
    assert "Traceback" not in result.stderr
