"""The manifest of a bulk run: one CSV row per input image with its latest status.

Columns: path, status (``done``; ``failed``; ``found``: both outputs were already there but no
row said so, e.g. a run killed between writing them and recording them), error, width, height,
bytes (size of the input file), read_s, infer_s, write_s, seconds (their sum), run (the run's
id, a UTC time stamp), finished_at. Rows are appended and flushed as images finish, so a run
that is killed keeps what it did; the next run reads the file (a half-written last line is
dropped), rewrites it without duplicates, and carries on. At the end it is rewritten sorted.
"""
from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("path", "status", "error", "width", "height", "bytes", "read_s", "infer_s",
           "write_s", "seconds", "run", "finished_at")
MANIFEST_NAME = "bulk_manifest.csv"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_CREATED_MODE = 0o666 & ~_umask()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    """The last row of each path in an existing manifest; incomplete lines are left out."""
    rows: dict[str, dict[str, str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                if all(row.get(column) is not None for column in COLUMNS) and row["status"]:
                    rows[row["path"]] = {column: row[column] for column in COLUMNS}
    except FileNotFoundError:
        pass
    return rows


class Manifest:
    """Rows by path, mirrored to a CSV file that is appended to while a run goes on."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows = _read_rows(self.path)
        self._stream = None

    def __enter__(self) -> Manifest:
        self._rewrite()
        self._stream = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._stream, fieldnames=COLUMNS)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._rewrite()

    def status(self, location: str) -> str | None:
        row = self.rows.get(location)
        return row["status"] if row else None

    def record(self, rows: Iterable[dict]) -> None:
        """Add rows (missing columns empty), on disk at once."""
        for row in rows:
            complete = {column: _text(row.get(column, "")) for column in COLUMNS}
            complete["finished_at"] = complete["finished_at"] or utc_now()
            self.rows[complete["path"]] = complete
            self._writer.writerow(complete)
        self._stream.flush()

    def _rewrite(self) -> None:
        """Replace the file by the current rows, sorted, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                             dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows[key] for key in sorted(self.rows))
            os.chmod(temporary, _CREATED_MODE)      # mkstemp's 0600 -> what open() would give
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
