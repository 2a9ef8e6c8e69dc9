"""``run``: the Ray Data pipeline of a bulk run, its resumption and its summary.

list -> ``decode_batch`` (CPU tasks) -> ``MaskPredictor`` (a pool of actors, each holding the
model: on a GPU each with ``gpus_per_actor``, else on CPUs) -> ``write_batch`` (CPU tasks) ->
the driver, which records each row in the manifest as it arrives. Ray is imported here only.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..cli import Progress
from ..data.images import listing
from ..errors import BiRefNetError, InputError
from ..weights.hub import resolve_checkpoint
from .manifest import MANIFEST_NAME, Manifest
from .sources import finished_stems, is_uri, list_sources, remove_partial_files, stem_of
from .stages import MaskPredictor, decode_batch, write_batch

INSTALL_HINT = ('bulk processing needs Ray Data, which is not installed: pip install "ray[data]" '
                "(or pip install -r requirements-bulk.txt)")
CORE_DIR = Path(__file__).resolve().parents[1]
_MAX_BLOCKS = 20_000          # blocks of paths Ray Data schedules; more rows per block above
DECODE_MEMORY = 512 * 2**20   # bytes a decoding task reserves: a worker (torch imported, ~370
                              # MiB measured) and a batch of decoded photos


class BulkError(BiRefNetError):
    """A bulk run that cannot start or whose pipeline broke down (not a single bad image)."""


@dataclass
class BulkSummary:
    """What a run did. ``seconds`` is its whole time, Ray's start-up and model loading included."""
    total: int
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    first_result_s: float | None = None
    manifest: Path | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        counts = (f"{self.done} of {self.total} images done, {self.skipped} already done "
                  f"earlier, {self.failed} failed, in {self.seconds:.1f} s "
                  f"({self.images_per_s:.2f} images/s; the first came after "
                  f"{self.first_result_s or 0:.1f} s of start-up)")
        lines = [counts, f"manifest: {self.manifest}"]
        if self.failures:
            lines.append("failed: " + listing(f"{path}: {error}" for path, error in self.failures))
        if self.ignored:
            lines.append("left out (not an image suffix, or inside the output folder): "
                         + listing(self.ignored))
        return "\n".join(lines)


def run(source: str, output: str | Path, *, model: str = "BiRefNet",
        resolution: int | tuple[int, int] | None = None, detail: bool = False,
        refine_foreground: bool = False, address: str | None = None, actors: int = 1,
        gpus_per_actor: float | None = None, batch_size: int | None = None,
        threads_per_actor: int | None = None, num_cpus: int | None = None,
        dtype: str = "auto", models_dir: str | None = None, manifest: str | Path | None = None,
        progress: bool = True) -> BulkSummary:
    """Mask and cut out every image of ``source`` into the folder ``output`` (see the module
    docstrings of ``birefnet_core.bulk``). Images whose two outputs exist are skipped.

    ``address``: a Ray cluster (``"auto"``: the one running here; None: the one already
    initialised in this process, else a new local one with ``num_cpus``). ``gpus_per_actor``: None = 1 when the cluster has GPUs, else CPU actors.
    ``batch_size``: images per forward (None: 4 on GPUs, 1 on CPUs). Raises InputError or
    BulkError when the run cannot start; single images that fail are in the summary."""
    if actors < 1:
        raise InputError(f"actors must be at least 1, got {actors}")
    out_dir = Path(output).expanduser()
    images, ignored = list_sources(str(source), output=out_dir)
    if any(not is_uri(image) and Path(image).parent == out_dir.resolve() for image in images):
        raise InputError(f"--output {out_dir} holds input images: its cut-outs would be taken "
                         "for inputs by the next run; write them to another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out_dir)
    finished = finished_stems(out_dir)
    if address is None:          # one machine: fail fast (and download once) before Ray starts
        model = str(resolve_checkpoint(model, models_dir))
    summary = BulkSummary(total=len(images), ignored=ignored,
                          manifest=Path(manifest) if manifest else out_dir / MANIFEST_NAME)
    start, run_id = time.perf_counter(), _run_id()
    with Manifest(summary.manifest) as book:
        todo = []
        for location in images:
            if stem_of(location) not in finished:
                todo.append(location)
                continue
            summary.skipped += 1
            if book.status(location) not in ("done", "found"):
                book.record([{"path": location, "status": "found", "run": run_id}])
        if todo:
            options = {"model": model, "resolution": resolution, "detail": detail, "dtype": dtype,
                       "refine_foreground": refine_foreground, "models_dir": models_dir}
            _run_pipeline(todo, out_dir, book, summary, options, address=address,
                          actors=actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size,
                          threads_per_actor=threads_per_actor, num_cpus=num_cpus,
                          progress=progress, start=start, run_id=run_id)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_id() -> str:
    """When the run started (UTC, to the microsecond): sorts in time order."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise BulkError(INSTALL_HINT) from error
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray unless it already is; whether this call did."""
    if ray.is_initialized():
        return False
    if address is None:         # a new local Ray, even where `ray start` left one (--address auto)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)
    else:                       # the cluster gets this package from the driver
        ray.init(address=address, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(CORE_DIR)]})
    return True


def _resources(ray, actors: int, gpus_per_actor: float | None, batch_size: int | None,
               threads: int | None) -> dict:
    """How much of the cluster each actor and each CPU task reserves."""
    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 1.0)), float(cluster.get("GPU", 0.0))
    gpus_each = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    if gpus_each > 0 and gpus_each * actors > gpus + 1e-9:
        raise BulkError(f"{actors} actors with {gpus_each:g} GPU each need {gpus_each * actors:g} "
                        f"GPUs, but the Ray cluster has {gpus:g}: lower --actors or "
                        "--gpus-per-actor (0 runs the actors on CPUs)")
    if gpus_each > 0:
        actor_cpus, device = 1.0, "cuda"
    else:   # leave at least one CPU (half of a one-CPU cluster) to reading and writing
        actor_cpus, device = min(1.0, max(cpus - 1.0, cpus / 2.0) / actors), "cpu"
        threads = threads or max(1, int(cpus // actors))
    return {"actor_cpus": actor_cpus, "gpus": gpus_each, "device": device, "threads": threads,
            "task_cpus": min(1.0, cpus - actor_cpus * actors),
            "batch_size": batch_size or (4 if gpus_each > 0 else 1)}


def _run_pipeline(todo: list[str], out_dir: Path, book: Manifest, summary: BulkSummary,
                  options: dict, *, address, actors, gpus_per_actor, batch_size,
                  threads_per_actor, num_cpus, progress, start, run_id) -> None:
    ray = _import_ray()
    started_here = _connect(ray, address, num_cpus)
    try:
        plan = _resources(ray, actors, gpus_per_actor, batch_size, threads_per_actor)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False          # one bar of our own, per image
        rows_per_block = max(plan["batch_size"], math.ceil(len(todo) / _MAX_BLOCKS))
        items = [{"path": location, "stem": stem_of(location)} for location in todo]
        dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / rows_per_block))
        # Decoding reserves memory for the images it holds; that also keeps Ray Data from
        # fusing it into the actors (it fuses stages whose resources are equal): CPU tasks.
        dataset = dataset.map_batches(decode_batch, batch_format="numpy", memory=DECODE_MEMORY,
                                      batch_size=plan["batch_size"], num_cpus=plan["task_cpus"])
        dataset = dataset.map_batches(
            MaskPredictor, batch_format="numpy", batch_size=plan["batch_size"],
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=plan["actor_cpus"],
            num_gpus=plan["gpus"] or None,
            fn_constructor_kwargs={**options, "device": plan["device"], "threads": plan["threads"]})
        dataset = dataset.map_batches(write_batch, batch_format="numpy", num_cpus=plan["task_cpus"],
                                      fn_kwargs={"out_dir": str(out_dir)})
        _consume(dataset, book, summary, len(todo), progress, start, run_id)
    except ray.exceptions.RayError as error:
        raise BulkError(f"the Ray pipeline stopped: {_first_lines(error)}") from error
    finally:
        if started_here:
            ray.shutdown()


def _consume(dataset, book: Manifest, summary: BulkSummary, total: int, show: bool,
             start: float, run_id: str) -> None:
    """Record each finished row as it arrives; progress per image."""
    bar = Progress(total) if show else None
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            if summary.first_result_s is None:
                summary.first_result_s = time.perf_counter() - start
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            for row in rows:
                row["run"] = run_id
                row["seconds"] = float(row["read_s"] + row["infer_s"] + row["write_s"])
                if row["status"] == "done":
                    summary.done += 1
                else:
                    summary.failures.append((str(row["path"]), str(row["error"])))
                    if bar is not None:
                        bar.note(f"error: {row['path']}: {row['error']}")
                if bar is not None:
                    bar.advance(stem_of(str(row["path"])))
            book.record(rows)
    finally:
        if bar is not None:
            bar.close()


def _first_lines(error: BaseException, count: int = 6) -> str:
    """The end of a Ray error's text: the remote exception's type and message, not its stack."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])
