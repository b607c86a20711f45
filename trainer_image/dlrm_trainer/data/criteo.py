"""Streaming reader of the Criteo Kaggle / Terabyte TSV format.

Each line is ``label \\t 13 integer counts \\t 26 hexadecimal categorical tokens``; any field may be
empty. The files are tens to hundreds of gigabytes, so they are read line by line and never held in
memory, and lines of batches that belong to other trainers (or lie before a resume cursor) are
skipped without being split or parsed.

Batch assignment is positional (line i is in batch i // batch_size, batch b goes to shard
b % num_shards), the same partition as the synthetic generator, so that cursors, progress and
lost-sample accounting mean the same thing for both sources.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch

from dlrm_trainer.data.batch import Batch, check_shard
from dlrm_trainer.data.synthetic import SyntheticCriteo


def hash_category(token: str, rows: int) -> int:
    """The embedding row of a categorical token.

    Criteo tokens are already 32-bit hashes written in hex, so their value modulo the table size is
    a uniform, stable id; any other token falls back to crc32. Python's ``hash()`` is salted per
    process and would give every trainer different ids for the same token.
    """
    if not token:
        return 0
    try:
        value = int(token, 16)
    except ValueError:
        value = zlib.crc32(token.encode())
    return value % rows


def _open_text(path: Path, mode: str = "rt") -> IO[str]:
    # Criteo Terabyte is distributed gzip-compressed (day_N.gz).
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode, encoding="utf-8", newline="\n"))
    return open(path, mode, encoding="utf-8", newline="\n")


class CriteoTSV:
    """A Criteo-format file, or a directory of files read in sorted name order as one stream."""

    def __init__(
        self, paths: list[Path] | Path | str, table_rows: list[int], num_dense: int = 13, num_sparse: int = 26
    ) -> None:
        if len(table_rows) != num_sparse:
            raise ValueError(f"{len(table_rows)} table sizes for {num_sparse} sparse features")
        if any(rows < 1 for rows in table_rows):
            raise ValueError(f"table sizes must be positive, got {table_rows}")
        self.files = self._resolve(paths)
        self.table_rows = [int(rows) for rows in table_rows]
        self.num_dense = num_dense
        self.num_sparse = num_sparse

    @staticmethod
    def _resolve(paths: list[Path] | Path | str) -> list[Path]:
        files: list[Path] = []
        for entry in [paths] if isinstance(paths, str | Path) else paths:
            path = Path(entry)
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"no Criteo file or directory at {path}")
        if not files:
            raise FileNotFoundError(f"no Criteo files in {paths}")
        return files

    def _lines(self) -> Iterator[str]:
        """All non-blank lines of all files, in order."""
        for path in self.files:
            with _open_text(path) as handle:
                for line in handle:
                    if line.strip():
                        yield line

    def num_samples(self) -> int:
        """Lines in all files (a full read, without parsing); for sizing an evaluation tail."""
        return sum(1 for _ in self._lines())

    def batches(
        self,
        batch_size: int,
        shard: int = 0,
        num_shards: int = 1,
        start_cursor: int = 0,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[tuple[int, Batch]]:
        """This shard's batches, from ``start_cursor`` on, each with the cursor after it.

        ``limit`` caps the samples of the pass over all shards (like ``train_samples``), so the last
        global batch may be short; ``offset`` skips that many lines first, so the tail of a file can
        serve as the held-out set.
        """
        check_shard(shard, num_shards)
        if batch_size < 1 or start_cursor < 0 or offset < 0 or (limit is not None and limit < 0):
            raise ValueError("batch_size must be >= 1; start_cursor, offset and limit must be >= 0")
        lines = self._lines()
        position = 0  # global batch index of the next unread line
        _consume(lines, offset)
        cursor = start_cursor
        while True:
            target = shard + cursor * num_shards
            wanted = batch_size if limit is None else min(batch_size, limit - target * batch_size)
            if wanted <= 0:
                return
            _consume(lines, (target - position) * batch_size)
            chunk = list(itertools.islice(lines, wanted))
            position = target + 1
            if not chunk:
                return
            cursor += 1
            yield cursor, self.parse(chunk, where=f"global batch {target}")
            if len(chunk) < wanted:
                return

    def parse(self, lines: list[str], where: str = "") -> Batch:
        """Turn Criteo lines into a Batch: missing or negative counts become 0, then log1p."""
        num_dense, num_sparse = self.num_dense, self.num_sparse
        width = 1 + num_dense + num_sparse
        labels = np.empty(len(lines), dtype=np.float32)
        dense = np.empty((len(lines), num_dense), dtype=np.float32)
        sparse = np.empty((len(lines), num_sparse), dtype=np.int64)
        rows = self.table_rows
        for i, line in enumerate(lines):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < width:
                fields.extend([""] * (width - len(fields)))
            label = fields[0].strip()
            if label not in ("0", "1"):
                raise ValueError(f"Criteo line {i} of {where or 'batch'}: label must be 0 or 1, got {label!r}")
            labels[i] = 1.0 if label == "1" else 0.0
            dense[i] = [float(value) if value else 0.0 for value in fields[1 : 1 + num_dense]]
            tokens = fields[1 + num_dense : width]
            try:
                sparse[i] = [int(token, 16) % r if token else 0 for token, r in zip(tokens, rows, strict=True)]
            except ValueError:
                sparse[i] = [hash_category(token, r) for token, r in zip(tokens, rows, strict=True)]
        np.maximum(dense, 0.0, out=dense)
        # NaN counts (a "nan" field) would poison every gradient; treat them as missing.
        np.nan_to_num(dense, copy=False, nan=0.0, posinf=0.0)
        return Batch(
            dense=torch.from_numpy(np.log1p(dense)),
            sparse=torch.from_numpy(sparse),
            labels=torch.from_numpy(labels),
        )


def _consume(lines: Iterator[str], count: int) -> None:
    """Advance past ``count`` lines without keeping them (the fast way to skip in CPython)."""
    if count > 0:
        collections.deque(itertools.islice(lines, count), maxlen=0)


def write_synthetic_tsv(
    path: Path | str, generator: SyntheticCriteo, samples: int, stream: str = "train", batch_size: int = 4096
) -> Path:
    """Write ``samples`` synthetic samples in Criteo format (gzip if the name ends in .gz).

    The file holds exactly ``generator.batch(stream, i, batch_size)`` for i = 0, 1, ... (the last one
    cut short), so reading it back with the same batch_size reproduces those batches bit for bit:
    counts are written as integers and ids as 8-digit hex tokens, which ``hash_category`` maps back
    to the same ids because every id is below the table size.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_text(path, "wt") as handle:
        index = 0
        while index * batch_size < samples:
            raw = generator.raw_batch(stream, index, batch_size)
            size = min(batch_size, samples - index * batch_size)
            counts = raw.counts[:size].astype(np.int64)
            out = []
            for label, row, ids in zip(raw.labels[:size], counts.tolist(), raw.ids[:size].tolist(), strict=True):
                dense = "\t".join(map(str, row))
                sparse = "\t".join(f"{value:08x}" for value in ids)
                out.append(f"{int(label)}\t{dense}\t{sparse}\n")
            handle.write("".join(out))
            index += 1
    return path
