"""An image folder described by ``metadata.jsonl`` (the imagefolder convention): a map-style dataset.

One JSON object a line::

    {"file_name": "cats/01.png", "text": "a red apple on a table", "pairs": [["red", "apple"]]}

``caption`` is accepted for ``text``; ``pairs`` (entity-attribute pairs) is optional. A line
that cannot be used is left out and listed in :attr:`FolderDataset.index_skips`, never fatal:
one bad line must not stop a long run. ``file_name`` must name a file inside the folder: an
absolute path or a ``..`` part (POSIX or Windows spelling) is refused. A symbolic link inside the
folder is followed wherever it points: placing it there is the owner's deliberate choice.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..errors import DataError
from .images import MAX_IMAGE_BYTES, MISSING_FILE, UNREADABLE_IMAGE, ImageProblem, ImageRules, decode_image
from .samples import Example, Skipped, mixed_seed, sample_rng

METADATA = "metadata.jsonl"
# Reasons a metadata line is left out.
MALFORMED_LINE = "malformed metadata line"
EMPTY_LINE = "empty metadata line"
MISSING_FIELD = "missing file_name or text"
BAD_PAIRS = "bad pairs"
OUTSIDE_FOLDER = "path outside the folder"


@dataclass(frozen=True)
class Record:
    """One usable line of metadata.jsonl."""

    file_name: str
    text: str
    pairs: list[tuple[str, str]] = field(default_factory=list)


def parse_pairs(value) -> list[tuple[str, str]] | None:
    """``[["red", "apple"], ...]`` to a list of tuples; None when it is not that shape."""
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    pairs = []
    for pair in value:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            return None
        pairs.append((pair[0], pair[1]))
    return pairs


def caption_of(entry: dict) -> str | None:
    """The caption of a JSON entry: "text", else its synonym "caption"; None when neither is a string."""
    for name in ("text", "caption"):
        if isinstance(entry.get(name), str):
            return entry[name]
    return None


def stays_inside(file_name: str) -> bool:
    """True when ``file_name`` is a relative path without ``..``, read as POSIX and as Windows."""
    if not file_name or "\x00" in file_name:
        return False
    for pure in (PurePosixPath(file_name), PureWindowsPath(file_name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            return False
    return True


def read_metadata(root: Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """The usable records of ``root/metadata.jsonl`` and ``(where, reason)`` for each line left out."""
    records: list[Record] = []
    problems: list[tuple[str, str]] = []
    with open(root / METADATA, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            where = f"{METADATA}:{number}"
            record, reason = _parse_line(line)
            if record is None:
                problems.append((where, reason))
            elif not os.path.isfile(root / record.file_name):
                problems.append((record.file_name, MISSING_FILE))
            else:
                records.append(record)
    return records, problems


def _parse_line(line: str) -> tuple[Record | None, str]:
    if not line.strip():
        return None, EMPTY_LINE
    try:
        entry = json.loads(line)
    except ValueError:
        return None, MALFORMED_LINE
    if not isinstance(entry, dict):
        return None, MALFORMED_LINE
    file_name, text = entry.get("file_name"), caption_of(entry)
    if not isinstance(file_name, str) or text is None:
        return None, MISSING_FIELD
    if not stays_inside(file_name):
        return None, OUTSIDE_FOLDER
    pairs = parse_pairs(entry.get("pairs"))
    if pairs is None:
        return None, BAD_PAIRS
    return Record(file_name, text, pairs), ""


class FolderDataset:
    """Map-style: ``len()``, :attr:`records`, :meth:`load` one sample by index."""

    def __init__(self, root: Path, rules: ImageRules):
        self.root = Path(root)
        self.rules = rules
        if not (self.root / METADATA).is_file():
            raise DataError(
                f"{self.root}: no {METADATA} in this folder; a data folder needs one line per image: "
                '{"file_name": "01.png", "text": "a caption"} (for WebDataset shards pass FOLDER/*.tar)'
            )
        self.records, self.index_skips = read_metadata(self.root)
        if not self.records:
            found = ""
            if self.index_skips:
                found = f" ({len(self.index_skips)} lines left out, first: {self.index_skips[0]})"
            raise DataError(f"{self.root / METADATA}: no usable line{found}; check the file names and captions")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, *, seed: int = 0, epoch: int = 0):
        """The sample at ``index`` as an ``Example``, or :class:`Skipped` with the reason."""
        record = self.records[index]
        try:
            with open(self.root / record.file_name, "rb") as file:
                data = file.read(MAX_IMAGE_BYTES + 1)
        except FileNotFoundError as error:
            return Skipped(record.file_name, MISSING_FILE, str(error))
        except OSError as error:
            return Skipped(record.file_name, UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
        image = decode_image(data, self.rules, sample_rng(seed, epoch, record.file_name))
        if isinstance(image, ImageProblem):
            return Skipped(record.file_name, image.reason, image.detail)
        return Example(image.pixels, record.text, list(record.pairs), record.file_name,
                       image.original_size, image.crop_top_left)

    def stream(self, *, rank: int, world_size: int, seed: int) -> FolderStream:
        return FolderStream(self, rank=rank, world_size=world_size, seed=seed)


class FolderStream:
    """This rank's endless sequence of samples ("slots"), epoch after epoch.

    Epoch ``e`` is a permutation of all indices drawn from (seed, e); rank ``r`` takes every
    ``world_size``-th entry from ``r``, wrapping round to the start when the count does not
    divide evenly (every rank gets ``ceil(N / world_size)`` slots, as DistributedSampler pads).
    Slot ``s`` lies in epoch ``s // per_rank``: any slot is found without reading what precedes it.
    """

    def __init__(self, dataset: FolderDataset, *, rank: int, world_size: int, seed: int):
        self.dataset, self.rank, self.world_size, self.seed = dataset, rank, world_size, seed
        self.per_rank = math.ceil(len(dataset) / world_size)
        self._order_epoch, self._order = -1, None

    def epoch_of(self, slot: int) -> tuple[int, int]:
        """(epoch, its first slot) for the epoch holding ``slot``."""
        epoch = slot // self.per_rank
        return epoch, epoch * self.per_rank

    def epoch_end(self, epoch: int) -> int:
        """One past the last slot of ``epoch``."""
        return (epoch + 1) * self.per_rank

    def index_at(self, slot: int) -> int:
        """The dataset index this rank reads at ``slot``."""
        epoch, start = self.epoch_of(slot)
        if epoch != self._order_epoch:
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, "order", epoch))
            self._order, self._order_epoch = torch.randperm(len(self.dataset), generator=generator), epoch
        return int(self._order[(self.rank + self.world_size * (slot - start)) % len(self.dataset)])

    def load(self, slot: int):
        return self.dataset.load(self.index_at(slot), seed=self.seed, epoch=self.epoch_of(slot)[0])

    def problems_between(self, first: int, end: int) -> list[Skipped]:
        """Problems that belong to no sample: none here (bad metadata lines are in index_skips)."""
        return []

    def close(self) -> None:
        pass
