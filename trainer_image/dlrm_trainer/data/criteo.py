"""Reader of the Criteo Kaggle / Terabyte TSV format, and the split of a data set into what is
trained on and what is held out.

Each line is ``label \\t 13 integer counts \\t 26 hexadecimal categorical tokens``; any field may be
empty, and blank lines are skipped. The files are tens to hundreds of gigabytes, so they are
streamed and never held in memory.

What is held out (``layout``) never overlaps what is trained on: ``data.evalPath`` when it is set
(it may share no file with ``data.path``); otherwise the last file of a ``data.path`` directory in
natural name order (``day_23`` of Criteo Terabyte, the usual test day); otherwise the last
``data.evalSamples`` lines of the single file, which training stops short of.

Each trainer reads only its own part of the training data (``CriteoTSV.batches``):

* uncompressed files: the training bytes of all files, in order, are cut into ``num_shards``
  contiguous byte ranges; a range holds the lines that *begin* inside it, so every line is in
  exactly one range and a trainer seeks straight to its own;
* gzip files, which cannot be sought: file i goes to trainer i % num_shards when there are at least
  as many files as trainers. With fewer files every trainer decompresses all of them and keeps its
  share of a positional partition (line i is in global batch i // batch_size, global batch b goes
  to shard b % num_shards, the synthetic generator's partition), and a warning says so.

A trainer's batches are consecutive lines of its part and its cursor counts them, so resuming at
cursor c skips c * batch_size lines of its part without parsing them. The sample budget of a pass
(``limit``, all trainers together, like ``data.trainSamples``) is dealt out evenly: trainer k gets
limit // num_shards samples, one more when k < limit % num_shards; a part with fewer lines ends its
pass early. In the positional fallback the budget caps the global stream instead.

Parsing (``CriteoTSV.parse``) works on a whole batch with numpy: the batch is split into cells in
one go, counts and hex tokens of up to 16 digits are converted by a lookup table over their bytes
(``bytes.translate``) and 64-bit word arithmetic, and only the odd cell (a token that is not hex, a
count that is not a plain integer) goes through Python; the result is bit for bit what converting
field by field with ``float()`` and ``hash_category`` gives.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast

import numpy as np
import numpy.typing as npt
import torch

from dlrm_trainer.data.batch import Batch, check_shard, shard_num_batches
from dlrm_trainer.data.synthetic import SyntheticCriteo

log = logging.getLogger("dlrm_trainer.data.criteo")

IntArray = npt.NDArray[np.int64]
ByteArray = npt.NDArray[np.uint8]

TAIL_BLOCK = 1 << 20  # bytes read per step when looking for the held-out tail from the end of a file
PARSE_ROWS = 8192  # lines converted at once by parse (bounds its temporary arrays)
MAX_HEX_DIGITS = 16  # longer tokens do not fit 64 bits: they go through hash_category
MAX_COUNT_DIGITS = 15  # integers of up to 15 digits are exact in float64, like float() makes them


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


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _blank(line: bytes) -> bool:
    return not line or line.isspace()


# --- files, and what is held out ---------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that compares runs of digits as numbers: ``day_2`` before ``day_10``."""
    pieces = _DIGIT_RUN.split(name)  # text at even indices, digit runs at odd ones
    return tuple(int(piece) if i % 2 else piece for i, piece in enumerate(pieces)), name


def data_files(path: Path | str) -> list[Path]:
    """A file, or the files of a directory (not hidden ones, not subdirectories) in natural order."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise FileNotFoundError(f"no Criteo files in {path}")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no Criteo file or directory at {path}")


@dataclass(frozen=True)
class FilePart:
    """A data file, or its part from ``start`` up to ``stop`` (None: the end of the file).

    In an uncompressed file positions are byte offsets, each the start of a line; in a gzip file,
    which cannot be sought, they count the file's non-blank lines.
    """

    path: Path
    start: int = 0
    stop: int | None = None

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".gz"

    def end(self) -> int:
        """The byte offset an uncompressed part stops at: ``stop``, or the size of the file."""
        if self.compressed:
            raise ValueError(f"{self.path} is compressed: its parts have no byte offsets")
        return self.path.stat().st_size if self.stop is None else self.stop

    def __str__(self) -> str:
        if self.start == 0 and self.stop is None:
            return str(self.path)
        unit = "lines" if self.compressed else "bytes"
        return f"{self.path} ({unit} {self.start} to {'the end' if self.stop is None else self.stop})"


@dataclass(frozen=True)
class Layout:
    """What training reads and what evaluation reads; the two never share a line."""

    train: tuple[FilePart, ...]
    eval: tuple[FilePart, ...]
    held_out: str  # which rule chose the held-out data, for the log


def _line_starts_backwards(path: Path, block: int = TAIL_BLOCK) -> Iterator[int]:
    """Byte offsets of the non-blank lines of an uncompressed file, the last line first.

    Reads the file backwards from its end in blocks, so finding the last lines costs their size,
    not the file's.
    """
    with open(path, "rb") as handle:
        position = handle.seek(0, 2)
        partial = b""  # the bytes after ``position`` before the first newline seen: a line's unread end
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + partial
            pieces = data.split(b"\n")
            end = len(data)
            for piece in reversed(pieces[1:]):  # every piece after a newline is a whole line
                start = end - len(piece)
                if not _blank(piece):
                    yield position + start
                end = start - 1
            partial = pieces[0]
        if not _blank(partial):
            yield 0


def tail_offset(path: Path, lines: int, block: int = TAIL_BLOCK) -> int | None:
    """Byte offset at which the last ``lines`` non-blank lines of an uncompressed file begin; None
    when the file does not hold more than ``lines`` lines (nothing would be left before them)."""
    if lines < 1:
        raise ValueError(f"lines must be >= 1, got {lines}")
    offset = None
    for found, start in enumerate(_line_starts_backwards(path, block), 1):
        if found > lines:
            return offset
        offset = start
    return None


def count_lines(path: Path) -> int:
    """Non-blank lines of a file: a full read (for a gzip file, a full decompression)."""
    with _open_binary(path) as handle:
        return sum(1 for line in handle if not _blank(line))


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def layout(path: Path | str, eval_path: Path | str | None, eval_samples: int) -> Layout:
    """Decide what is trained on and what is held out (``data.path``, ``data.evalPath``, ``data.evalSamples``).

    * ``eval_path`` set: evaluate on it, train on ``path``; they may not share a file.
    * otherwise, a directory of two or more files: the last file in natural order is held out.
    * otherwise, one file: its last ``eval_samples`` lines are held out and training stops before
      them. An uncompressed file is read backwards from its end, only as far as the tail; a gzip file
      cannot be, so its lines are counted first: one full decompression, on every trainer at start.
    """
    train_files = data_files(path)
    if eval_path is not None:
        eval_files = data_files(eval_path)
        train_ids = {_identity(p) for p in train_files}
        shared = [p for p in eval_files if _identity(p) in train_ids]
        if shared:
            raise ValueError(
                f"data.evalPath {eval_path} overlaps data.path {path} ({shared[0]} is in both), so evaluation "
                "would score samples it trained on: point data.evalPath at other files, or leave it unset to "
                "hold out the tail of data.path")
        return Layout(tuple(map(FilePart, train_files)), tuple(map(FilePart, eval_files)),
                      f"data.evalPath {eval_path}")
    if len(train_files) >= 2:
        last = train_files[-1]
        return Layout(tuple(map(FilePart, train_files[:-1])), (FilePart(last),),
                      f"the last file of {path}, {last.name}")
    (only,) = train_files
    if only.suffix == ".gz":
        total = count_lines(only)
        start: int | None = total - eval_samples if total > eval_samples else None
    else:
        start = tail_offset(only, eval_samples)
    if start is None:
        raise ValueError(
            f"data.evalSamples ({eval_samples}) leaves nothing to train on: {only} holds no more lines than that; "
            "lower data.evalSamples, or set data.evalPath")
    return Layout((FilePart(only, stop=start),), (FilePart(only, start=start),),
                  f"the last {eval_samples} lines of {only}")


# --- reading -----------------------------------------------------------------------------------------


def _read_range(path: Path, begin: int, end: int) -> Iterator[bytes]:
    """The non-blank lines of an uncompressed file that begin at a byte offset in [begin, end)."""
    if begin >= end:
        return
    with open(path, "rb") as handle:
        position = 0
        if begin > 0:  # the first line starting at or after begin: skip the rest of the line at begin - 1
            handle.seek(begin - 1)
            position = begin - 1 + len(handle.readline())
        while position < end:
            line = handle.readline()
            if not line:
                return
            position += len(line)
            if not line.isspace():
                yield line


def _read_part(part: FilePart) -> Iterator[bytes]:
    """The non-blank lines of a part, in order."""
    if not part.compressed:
        yield from _read_range(part.path, part.start, part.end())
        return
    with _open_binary(part.path) as handle:
        lines: Iterator[bytes] = (line for line in handle if not _blank(line))
        yield from itertools.islice(lines, part.start, part.stop)


def _share(limit: int, shard: int, num_shards: int) -> int:
    """Trainer ``shard``'s part of a budget of ``limit`` samples over ``num_shards`` trainers."""
    return limit // num_shards + (1 if shard < limit % num_shards else 0)


Sharding = Literal["bytes", "files", "positional"]


class CriteoTSV:
    """Criteo-format data: a file, a directory of files (natural name order) or parts of files,
    read as one stream in that order; each trainer reads only its own part of it (module docstring)."""

    def __init__(
        self,
        paths: Sequence[Path | str | FilePart] | Path | str | FilePart,
        table_rows: list[int],
        num_dense: int = 13,
        num_sparse: int = 26,
    ) -> None:
        if len(table_rows) != num_sparse:
            raise ValueError(f"{len(table_rows)} table sizes for {num_sparse} sparse features")
        if any(rows < 1 for rows in table_rows):
            raise ValueError(f"table sizes must be positive, got {table_rows}")
        self.parts = self._resolve(paths)
        self.table_rows = [int(rows) for rows in table_rows]
        self.num_dense = num_dense
        self.num_sparse = num_sparse
        self._rows = np.array(self.table_rows, dtype=np.uint64)

    @staticmethod
    def _resolve(paths: Sequence[Path | str | FilePart] | Path | str | FilePart) -> list[FilePart]:
        parts: list[FilePart] = []
        for entry in [paths] if isinstance(paths, str | Path | FilePart) else paths:
            if isinstance(entry, FilePart):
                if not entry.path.is_file():
                    raise FileNotFoundError(f"no Criteo file at {entry.path}")
                parts.append(entry)
            else:
                parts.extend(FilePart(p) for p in data_files(entry))
        if not parts:
            raise FileNotFoundError(f"no Criteo files in {paths}")
        return parts

    @property
    def files(self) -> list[Path]:
        return [part.path for part in self.parts]

    def _lines(self) -> Iterator[bytes]:
        """All non-blank lines of all parts, in order."""
        for part in self.parts:
            yield from _read_part(part)

    def num_samples(self) -> int:
        """Lines in all parts (a full read, without parsing)."""
        return sum(1 for _ in self._lines())

    def sharding(self, num_shards: int) -> Sharding:
        """How ``num_shards`` trainers divide the data: byte ranges, whole files, or positionally."""
        if not any(part.compressed for part in self.parts):
            return "bytes"
        return "files" if len(self.parts) >= num_shards else "positional"

    def batches_per_pass(self, batch_size: int, shard: int, num_shards: int, limit: int) -> int:
        """Batches trainer ``shard`` gets in a pass of ``limit`` samples (fewer if its part runs out)."""
        check_shard(shard, num_shards)
        if self.sharding(num_shards) == "positional":
            return shard_num_batches(shard, num_shards, batch_size, limit)
        return -(-_share(limit, shard, num_shards) // batch_size)

    def _own_lines(self, shard: int, num_shards: int, sharding: Sharding) -> Iterator[bytes]:
        """The lines of trainer ``shard``'s part, in order."""
        if sharding == "files":
            for part in self.parts[shard::num_shards]:
                yield from _read_part(part)
            return
        ends = [part.end() for part in self.parts]
        sizes = [max(0, end - part.start) for part, end in zip(self.parts, ends, strict=True)]
        total = sum(sizes)
        low, high = shard * total // num_shards, (shard + 1) * total // num_shards
        base = 0  # offset of this part in the concatenation of all parts
        for part, size in zip(self.parts, sizes, strict=True):
            begin, end = max(low - base, 0), min(high - base, size)
            if begin < end:
                yield from _read_range(part.path, part.start + begin, part.start + end)
            base += size

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

        ``limit`` caps the samples of the pass over all shards (like ``train_samples``); ``offset``
        skips that many lines of this shard's part first (of the whole stream in the positional
        fallback).
        """
        check_shard(shard, num_shards)
        if batch_size < 1 or start_cursor < 0 or offset < 0 or (limit is not None and limit < 0):
            raise ValueError("batch_size must be >= 1; start_cursor, offset and limit must be >= 0")
        sharding = self.sharding(num_shards)
        if sharding == "positional":
            log.warning(
                "%d gzip file(s) for %d trainers: every trainer decompresses all of them and keeps one batch in %d "
                "(gzip cannot be sought); split the data into at least %d files to give each trainer its own",
                len(self.parts), num_shards, num_shards, num_shards)
            yield from self._positional_batches(batch_size, shard, num_shards, start_cursor, limit, offset)
            return
        remaining = None if limit is None else _share(limit, shard, num_shards) - start_cursor * batch_size
        if remaining is not None and remaining <= 0:
            return
        lines = self._own_lines(shard, num_shards, sharding)
        _consume(lines, offset + start_cursor * batch_size)
        cursor = start_cursor
        while True:
            wanted = batch_size if remaining is None else min(batch_size, remaining)
            chunk = list(itertools.islice(lines, wanted))
            if not chunk:
                return
            cursor += 1
            yield cursor, self.parse(chunk, where=f"batch {cursor} of shard {shard}")
            if len(chunk) < wanted:
                return
            if remaining is not None:
                remaining -= len(chunk)
                if remaining == 0:
                    return

    def _positional_batches(self, batch_size: int, shard: int, num_shards: int, start_cursor: int,
                            limit: int | None, offset: int) -> Iterator[tuple[int, Batch]]:
        """Every trainer reads the whole stream and keeps global batches b with b % num_shards == shard;
        lines of other trainers' batches are skipped without being parsed."""
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

    # --- parsing -------------------------------------------------------------------------------------

    def parse(self, lines: Sequence[str] | Sequence[bytes], where: str = "") -> Batch:
        """Turn Criteo lines into a Batch: missing or negative counts become 0, then log1p; an empty
        token is id 0, a hex token its value modulo the table size, any other token its crc32."""
        labels = np.empty(len(lines), dtype=np.float32)
        dense = np.empty((len(lines), self.num_dense), dtype=np.float32)
        sparse = np.empty((len(lines), self.num_sparse), dtype=np.int64)
        for first in range(0, len(lines), PARSE_ROWS):
            rows = slice(first, first + PARSE_ROWS)
            self._parse_rows(lines[rows], f"{where or 'batch'}", first, labels[rows], dense[rows], sparse[rows])
        np.maximum(dense, 0.0, out=dense)
        # NaN counts (a "nan" field) would poison every gradient; treat them as missing.
        np.nan_to_num(dense, copy=False, nan=0.0, posinf=0.0)
        return Batch(
            dense=torch.from_numpy(np.log1p(dense)),
            sparse=torch.from_numpy(sparse),
            labels=torch.from_numpy(labels),
        )

    def _parse_rows(self, lines: Sequence[str] | Sequence[bytes], where: str, first: int,
                    labels: npt.NDArray[np.float32], dense: npt.NDArray[np.float32], sparse: IntArray) -> None:
        """Fill ``labels``, ``dense`` (raw counts) and ``sparse`` from ``lines``, line ``first`` on of ``where``."""
        n, num_dense, num_sparse = len(lines), self.num_dense, self.num_sparse
        data, buf, starts, lengths = _cells(lines, 1 + num_dense + num_sparse)

        # Labels: one byte, "0" or "1"; anything else is looked at in Python (" 1" is fine, "x" is not).
        first_byte = buf[starts[:, 0]]
        labels[:] = first_byte == ord("1")
        plain = (lengths[:, 0] == 1) & ((first_byte == ord("0")) | (first_byte == ord("1")))
        for i in np.flatnonzero(~plain).tolist():
            label = _text(data, starts[i, 0], lengths[i, 0]).strip()
            if label not in ("0", "1"):
                raise ValueError(f"Criteo line {first + i} of {where}: label must be 0 or 1, got {label!r}")
            labels[i] = 1.0 if label == "1" else 0.0

        # Counts: integers through a digit table, anything else (a fraction, "nan") through float().
        count_starts = starts[:, 1 : 1 + num_dense].ravel()
        count_lengths = lengths[:, 1 : 1 + num_dense].ravel()
        counts, plain = _counts(buf, data, count_starts, count_lengths)
        for k in np.flatnonzero(~plain).tolist():
            text = _text(data, count_starts[k], count_lengths[k])
            try:
                counts[k] = float(text)
            except ValueError:
                i, j = divmod(k, num_dense)
                raise ValueError(f"Criteo line {first + i} of {where}: count {j} must be a number, "
                                 f"got {text!r}") from None
        dense[:] = counts.reshape(n, num_dense)

        # Tokens: up to 16 hex digits through a digit table, anything else through hash_category.
        token_starts = starts[:, 1 + num_dense :].ravel()
        token_lengths = lengths[:, 1 + num_dense :].ravel()
        values, hexadecimal = _hex_values(data, token_starts, token_lengths)
        sparse[:] = (values.reshape(n, num_sparse) % self._rows).astype(np.int64)
        for k in np.flatnonzero(~hexadecimal).tolist():
            i, f = divmod(k, num_sparse)
            sparse[i, f] = hash_category(_text(data, token_starts[k], token_lengths[k]), self.table_rows[f])


def _text(data: bytes, start: int | np.integer, length: int | np.integer) -> str:
    return data[int(start) : int(start) + int(length)].decode()


def _fit_fields(line: bytes, width: int) -> bytes:
    """The line with exactly ``width`` fields: missing trailing fields empty, extra ones dropped."""
    fields = line.split(b"\t")
    fields.extend([b""] * (width - len(fields)))
    return b"\t".join(fields[:width])


def _cells(lines: Sequence[str] | Sequence[bytes], width: int) -> tuple[bytes, ByteArray, IntArray, IntArray]:
    """Split lines into ``width`` cells each, in one go: the lines without their line ends joined by
    newlines (as bytes and as a byte array), and where each cell starts and how long it is ([n, width]).

    A line with too few cells (a truncated line) is padded with empty ones and one with too many is
    cut; only those lines are looked at one by one.
    """
    n = len(lines)
    if n and isinstance(lines[0], bytes):
        data = b"\n".join([line.rstrip(b"\r\n") for line in cast(Sequence[bytes], lines)])
    else:
        data = "\n".join([line.rstrip("\r\n") for line in cast(Sequence[str], lines)]).encode()
    if data.count(b"\n") != n - 1:
        raise ValueError("a Criteo line to parse holds a line break inside it")
    buf = np.frombuffer(data + b"\n", dtype=np.uint8)
    ends = np.flatnonzero((buf == 9) | (buf == 10))  # the tab or newline after each cell
    # There are exactly n newlines: if every line's last cell ends with one, every line has width cells.
    if len(ends) != n * width or not (buf[ends[width - 1 :: width]] == 10).all():
        data = b"\n".join([_fit_fields(line, width) for line in data.split(b"\n")])
        buf = np.frombuffer(data + b"\n", dtype=np.uint8)
        ends = np.flatnonzero((buf == 9) | (buf == 10))
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return data, buf, starts.reshape(n, width), (ends - starts).reshape(n, width)


def _digit_table(alphabet: str) -> bytes:
    """A ``bytes.translate`` table: a digit (a letter in either case) to its value, any other byte
    to 0xFF, so that in a 64-bit word of translated bytes a non-digit sets a high nibble."""
    table = bytearray(b"\xff" * 256)
    for value, char in enumerate(alphabet):
        table[ord(char)] = table[ord(char.upper())] = value
    return bytes(table)


_DECIMAL = _digit_table("0123456789")
_HEX = _digit_table("0123456789abcdef")
_PAD = 16  # bytes put before the text, so that the 16 bytes before any cell's end exist
_U64 = np.uint64
# _KEEP[k]: the last k bytes of an 8-byte little-endian word (its k most significant bytes).
_KEEP = np.array([0] + [((1 << 8 * k) - 1) << (64 - 8 * k) for k in range(1, 9)], dtype=np.uint64)
_HIGH_NIBBLES = _U64(0xF0F0F0F0F0F0F0F0)


def _words(data: bytes, table: bytes) -> npt.NDArray[np.uint64]:
    """Every byte of ``data`` through ``table``, seen as 64-bit little-endian words starting at every
    byte (overlapping, unaligned): word ``q`` holds translated bytes ``q - 16 ... q - 9`` of data."""
    text = (bytes(_PAD) + data).translate(table)
    return np.ndarray((len(text) - 7,), dtype="<u8", buffer=text, strides=(1,))


def _digit_words(words: npt.NDArray[np.uint64], ends: IntArray, lengths: IntArray,
                 group: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """The translated digits of each cell in one word, group 0 the last 8 characters, group 1 the 8
    before, the characters before the cell zeroed (leading zeros); and whether all are digits."""
    word = words[ends + (_PAD - 8 * (group + 1))] & _KEEP[np.clip(lengths - 8 * group, 0, 8)]
    return word, (word & _HIGH_NIBBLES) == 0


def _pack_hex(word: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Eight hex digit values, one per byte, first digit in the lowest byte: their 32-bit value."""
    pairs = ((word & _U64(0x000F000F000F000F)) << _U64(4)) | ((word >> _U64(8)) & _U64(0x000F000F000F000F))
    quads = ((pairs & _U64(0x000000FF000000FF)) << _U64(8)) | ((pairs >> _U64(16)) & _U64(0x000000FF000000FF))
    return ((quads & _U64(0xFFFF)) << _U64(16)) | ((quads >> _U64(32)) & _U64(0xFFFF))


def _pack_decimal(word: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Eight decimal digit values, one per byte, first digit in the lowest byte: their value."""
    pairs = (word & _U64(0x00FF00FF00FF00FF)) * _U64(10) + ((word >> _U64(8)) & _U64(0x00FF00FF00FF00FF))
    quads = (pairs & _U64(0x0000FFFF0000FFFF)) * _U64(100) + ((pairs >> _U64(16)) & _U64(0x0000FFFF0000FFFF))
    return (quads & _U64(0xFFFFFFFF)) * _U64(10_000) + (quads >> _U64(32))


def _counts(buf: ByteArray, data: bytes, starts: IntArray, lengths: IntArray) -> tuple[
        npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The value of each cell that is empty (0) or an optional minus sign and at most 15 digits,
    exactly as float() gives it (every such integer is exact in float64), and which cells are such;
    the others' values are meaningless."""
    negative = (lengths > 0) & (buf[starts] == ord("-"))
    digit_lengths = lengths - negative
    ends = starts + lengths
    words = _words(data, _DECIMAL)
    low, plain = _digit_words(words, ends, digit_lengths, 0)
    values = _pack_decimal(low)
    plain &= (digit_lengths <= MAX_COUNT_DIGITS) & ~(negative & (digit_lengths == 0))
    if digit_lengths.max(initial=0) > 8:
        high, digits = _digit_words(words, ends, digit_lengths, 1)
        plain &= digits
        values += _pack_decimal(high) * _U64(100_000_000)
    counts = values.astype(np.float64)
    counts[negative] *= -1.0  # "-0" is -0.0, as float() makes it
    return counts, plain


def _hex_values(data: bytes, starts: IntArray, lengths: IntArray) -> tuple[npt.NDArray[np.uint64],
                                                                          npt.NDArray[np.bool_]]:
    """The value of each token of at most 16 hex digits (0 when empty), and which tokens are such;
    the others' values are meaningless."""
    ends = starts + lengths
    words = _words(data, _HEX)
    low, hexadecimal = _digit_words(words, ends, lengths, 0)
    values = _pack_hex(low)
    if lengths.max(initial=0) > 8:
        high, digits = _digit_words(words, ends, lengths, 1)
        hexadecimal &= digits & (lengths <= MAX_HEX_DIGITS)
        values |= _pack_hex(high) << _U64(32)
    return values, hexadecimal


def _consume(lines: Iterator[bytes], count: int) -> None:
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
