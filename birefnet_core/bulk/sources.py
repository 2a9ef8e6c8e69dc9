"""What a bulk run reads and what it has already written.

SRC is a folder (its image files, not its sub-folders, as the CLI takes them), a glob
(``photos/**/*.jpg``), a text file of paths (``.txt``/``.lst``: one per line, ``#`` comments,
relative paths taken from the list's own folder) or one image. Local paths, or any URI pyarrow's
filesystems open (``s3://``, ``gs://``, ``hdfs://``; pyarrow comes with Ray Data and is imported
only for such URIs). Outputs go to a local folder, or one every node mounts at the same path.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..data.images import IMAGE_SUFFIXES, listing, output_paths
from ..errors import InputError

LIST_SUFFIXES = frozenset({".txt", ".lst"})
PARTIAL_SUFFIX = ".part"      # the temporary names of save_png_atomically and of the manifest
_WILDCARD = re.compile(r"[*?\[]")


def is_uri(location: str) -> bool:
    """``s3://...``, ``gs://...``, ``file:///...`` (a Windows drive letter is not a scheme)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", location) is not None


def remote_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of a URI."""
    from pyarrow import fs  # comes with ray[data]; only remote sources need it
    return fs.FileSystem.from_uri(uri)


# Characters a URI's file name may hold that Windows reads as a separator, a drive or a device
# stream: the outputs of s3://b/a\..\..\x.png would be written above --output on Windows.
_UNSAFE_IN_NAMES = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def stem_of(location: str) -> str:
    """The name the outputs are given: the file name without its suffix, as the CLI does.
    A URI's name can hold any character: those a local file name cannot hold become ``_``, so
    the outputs stay inside the output folder on every system."""
    if not is_uri(location):
        return Path(location).stem
    return _UNSAFE_IN_NAMES.sub("_", PurePosixPath(location).stem)


def _has_image_suffix(location: str) -> bool:
    return PurePosixPath(location.replace("\\", "/")).suffix.lower() in IMAGE_SUFFIXES


def _remote_listing(uri: str) -> list[str]:
    """Files of a remote folder, glob or single file, as URIs of the same scheme (and host)."""
    from pyarrow import fs
    filesystem, path = remote_filesystem(uri)
    trimmed = uri.rstrip("/")
    prefix = trimmed[:-len(path.rstrip("/"))] if trimmed.endswith(path.rstrip("/")) \
        else uri.split("://", 1)[0] + "://"
    wildcard = _WILDCARD.search(path)
    if wildcard:
        base = path[:wildcard.start()].rsplit("/", 1)[0]
        selector = fs.FileSelector(base, recursive="/" in path[len(base):].lstrip("/"))
        infos = [i for i in filesystem.get_file_info(selector) if fnmatch.fnmatch(i.path, path)]
    else:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise InputError(f"--input {uri}: no such file or folder")
        infos = ([info] if info.type == fs.FileType.File else
                 filesystem.get_file_info(fs.FileSelector(path, recursive=False)))
    return sorted(prefix + i.path for i in infos if i.type == fs.FileType.File)


def _read_list(location: str) -> list[str]:
    """The paths of a text file of paths (blank lines and ``#`` comments left out)."""
    if is_uri(location):
        filesystem, path = remote_filesystem(location)
        with filesystem.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    else:
        text = Path(location).read_text(encoding="utf-8")
    entries = [line.strip() for line in text.splitlines()]
    return [_beside(location, entry) for entry in entries if entry and not entry.startswith("#")]


def _beside(list_location: str, entry: str) -> str:
    """A list's entry: URIs and absolute paths as they are, relative ones from its folder."""
    if is_uri(entry):
        return entry
    if is_uri(list_location):
        return f"{list_location.rsplit('/', 1)[0]}/{entry}"
    return str((Path(list_location).resolve().parent / Path(entry).expanduser()).resolve())


def _local_listing(location: str) -> list[str]:
    if _WILDCARD.search(location):
        return sorted(str(Path(p).resolve()) for p in glob.glob(os.path.expanduser(location),
                                                                  recursive=True)
                      if Path(p).is_file())
    path = Path(location).expanduser()
    if path.is_dir():
        return sorted(str(p.resolve()) for p in path.iterdir() if p.is_file())
    if path.is_file():
        return [str(path.resolve())]
    raise InputError(f"--input {location}: no such file, folder or matching files")


def _nested_output(location: str, output: Path | None) -> Path | None:
    """The output folder (resolved) when a local pattern's fixed folder holds it below itself
    (``photos/**/*.png`` with outputs in ``photos/cutouts``), else None."""
    wildcard = _WILDCARD.search(location)
    if output is None or wildcard is None or is_uri(location):
        return None
    base = Path(os.path.dirname(os.path.expanduser(location[:wildcard.start()])) or ".")
    output = Path(output).expanduser().resolve()
    return output if base.resolve() in output.parents else None


def list_sources(location: str, output: Path | None = None) -> tuple[list[str], list[str]]:
    """(images to process, files left out: their suffix is not an image's, or a pattern found
    them inside the folder ``output``, where they are the outputs of earlier runs).

    Files named in a list are all taken (a non-image among them is reported by the run)."""
    remote = is_uri(location)
    outputs = _nested_output(location, output)
    suffix = PurePosixPath(location.replace("\\", "/")).suffix.lower()
    if suffix in LIST_SUFFIXES and not _WILDCARD.search(location):
        if not remote and not Path(location).expanduser().is_file():
            raise InputError(f"--input {location}: no such list of paths")
        images, ignored = _read_list(str(Path(location).expanduser()) if not remote else location), []
    else:
        found = _remote_listing(location) if remote else _local_listing(location)
        images = [f for f in found if _has_image_suffix(f)
                  and not (outputs is not None and outputs in Path(f).parents)]
        ignored = [f for f in found if f not in images]
    if not images:
        raise InputError(f"--input {location} holds no images (files with a suffix among "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}, or a .txt list of paths)")
    check_unique_stems(images)
    return images, ignored


def check_unique_stems(images: Iterable[str]) -> None:
    """Two inputs with the same name would write the same outputs: refuse before starting."""
    counts = Counter(stem_of(image) for image in images)
    doubles = sorted(stem for stem, count in counts.items() if count > 1)
    if doubles:
        raise InputError("several inputs have the same name, so their outputs would overwrite "
                         "each other: " + listing(doubles) + ". Rename them, or run once per "
                         "folder with a different --output")


def finished_stems(out_dir: Path) -> set[str]:
    """Names whose mask and cut-out both exist (written atomically, so both are whole)."""
    if not out_dir.is_dir():
        return set()
    names = {entry.name for entry in os.scandir(out_dir) if entry.is_file()}
    stems = {name[:-len("_mask.png")] for name in names if name.endswith("_mask.png")}
    return {stem for stem in stems
            if output_paths(out_dir, stem)[1].name in names}


def remove_partial_files(out_dir: Path) -> list[Path]:
    """Temporary files a killed run left behind (``.<name>.<random>.png.part``, never whole
    outputs): removed, and returned. One run per output folder at a time."""
    if not out_dir.is_dir():
        return []
    partial = [Path(entry.path) for entry in os.scandir(out_dir)
               if entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX)]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial
