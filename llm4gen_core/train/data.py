"""Training data for the loop: :func:`open_dataset`, then :func:`batches`, endless and resumable.

Two kinds of data (see :mod:`.folder` and :mod:`.shards`): a folder with ``metadata.jsonl``
(map-style) and WebDataset ``.tar`` shards (streamed). Images go through :mod:`.images`; bad
samples are counted by :class:`~.skips.SkipTally`.

How a batch is filled. Each rank reads its own endless sequence of samples, epoch after epoch
(its "slots"). Batch ``j`` covers slots ``[j*b, (j+1)*b)``, whatever happened before it: a bad
sample's place is taken by the next good sample of the sequence, which keeps its own place too
(so it appears twice in that epoch; only bad samples cause this). Because a batch's slots are
fixed by its number, a resumed run (``start_batch=k``) computes where batch ``k`` starts without
loading any earlier sample, and data-loader workers each build whole batches (worker ``w`` of
``n`` builds batches ``w, w+n, ...``) that come out in the same order as with no workers.

On resume, bad samples met before ``start_batch`` are not met again, so they are not counted
again: keep the :class:`SkipTally` in the checkpoint (``to_dict``/``from_dict``). A bad sample
in the lookahead of the batch before ``start_batch`` may be reported once more; the tally counts
each key once.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .folder import METADATA, FolderDataset
from .images import ImageRules
from .samples import Batch, Example, Skipped
from .shards import ShardDataset
from .skips import SkipTally

__all__ = ["Batch", "DataError", "Example", "FolderDataset", "ShardDataset", "SkipTally", "Skipped",
           "batches", "open_dataset"]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MIN_RESOLUTION = 8


def open_dataset(spec, resolution: int, *, center_crop: bool = True, random_flip: bool = False,
                 min_image_size: int | None = None):
    """A folder with metadata.jsonl -> :class:`FolderDataset`; a .tar file, glob or brace pattern
    (or a list of them) -> :class:`ShardDataset`.

    ``min_image_size`` (default ``resolution // 2``): an image whose shorter side is below it is
    skipped as "too small" rather than blown up into a blurry training target.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise DataError(f"resolution must be an integer of at least {MIN_RESOLUTION} pixels, got {resolution!r}")
    if min_image_size is None:
        min_image_size = resolution // 2
    if isinstance(min_image_size, bool) or not isinstance(min_image_size, int) or min_image_size < 1:
        raise DataError(f"min_image_size must be a positive integer, got {min_image_size!r}")
    rules = ImageRules(resolution, min_image_size, center_crop, random_flip)
    if isinstance(spec, (list, tuple)):
        return ShardDataset(list(spec), rules)
    path = Path(spec)
    if path.is_dir():
        return FolderDataset(path, rules)
    if path.name == METADATA and path.is_file():
        return FolderDataset(path.parent, rules)
    text = os.fspath(spec)
    if text.lower().endswith(SHARD_SUFFIXES) or any(char in text for char in "*?[{"):
        return ShardDataset(text, rules)
    raise DataError(
        f"{spec}: not a data folder or shards; give a folder holding metadata.jsonl, a .tar shard, "
        "a glob (shards/*.tar) or a brace pattern (data-{000..009}.tar)"
    )


def batches(dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
            start_batch: int = 0, num_workers: int = 0) -> Iterator[Batch]:
    """Endless full batches for this rank, epoch after epoch, the same sequence every run.

    Ranks read disjoint shares of each epoch. ``start_batch=k`` yields what an uninterrupted run
    yields from its k-th batch on. ``num_workers > 0`` builds batches in DataLoader worker
    processes (fork where the platform has it) and yields the identical sequence.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0),
                             ("start_batch", start_batch, 0), ("num_workers", num_workers, 0), ("seed", seed, None)):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            least = f" of at least {low}" if low is not None else ""
            raise DataError(f"{name} must be an integer{least}, got {value!r}")
    if rank >= world_size:
        raise DataError(f"rank must be below world_size ({world_size}), got {rank}")
    maker = BatchMaker(dataset.stream(rank=rank, world_size=world_size, seed=seed), batch_size)
    if num_workers == 0:
        return _in_process(maker, start_batch)
    return _in_workers(maker, start_batch, num_workers)


class BatchMaker:
    """Builds batch number ``j`` of one rank's sequence; see the module docstring for the rule."""

    def __init__(self, stream, batch_size: int):
        self.stream, self.batch_size = stream, batch_size
        self._loaded: dict[int, Example | Skipped] = {}   # slots already loaded (this batch's lookahead)

    def batch(self, number: int) -> Batch:
        size = self.batch_size
        first, end = number * size, (number + 1) * size
        self._loaded = {slot: result for slot, result in self._loaded.items() if slot >= first}
        skipped: dict[str, str] = {}
        for problem in self.stream.problems_between(first, end):
            skipped.setdefault(problem.key, problem.reason)
        chosen: list[Example] = []
        waiting, run_start, slot = 0, None, first   # waiting: places whose sample was bad, not yet filled
        while len(chosen) < size:
            result = self._load(slot)
            if isinstance(result, Skipped):
                skipped.setdefault(result.key, result.reason)
                run_start = slot if run_start is None else run_start
                self._stop_if_epoch_all_bad(run_start, slot, skipped)
                waiting += slot < end
            else:
                chosen.extend([result] * (waiting + (slot < end)))
                waiting, run_start = 0, None
            slot += 1
        return Batch(
            pixel_values=torch.stack([example.pixel_values for example in chosen]),
            texts=[example.text for example in chosen],
            pairs=[list(example.pairs) for example in chosen],
            keys=[example.key for example in chosen],
            skipped=list(skipped.items()),
            epoch=self.stream.epoch_of(first)[0],
            original_sizes=[example.original_size for example in chosen],
            crop_top_lefts=[example.crop_top_left for example in chosen],
        )

    def _load(self, slot: int):
        if slot not in self._loaded:
            self._loaded[slot] = self.stream.load(slot)
        return self._loaded[slot]

    def _stop_if_epoch_all_bad(self, run_start: int, slot: int, skipped: dict[str, str]) -> None:
        """Bad samples from ``run_start`` to ``slot`` covering a whole epoch: nothing left to train on."""
        epoch, start = self.stream.epoch_of(slot)
        if run_start > start or slot != self.stream.epoch_end(epoch) - 1:
            return
        reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(skipped.values()).most_common())
        first_bad = next(iter(skipped.items()))
        raise DataError(
            f"no usable sample: all {slot - start + 1} samples of epoch {epoch} (process {self.stream.rank}) are bad "
            f"({reasons}; first: {first_bad[0]}: {first_bad[1]}); check the data folder / shards"
        )

    def close(self) -> None:
        self.stream.close()


def _in_process(maker: BatchMaker, start_batch: int) -> Iterator[Batch]:
    try:
        for number in itertools.count(start_batch):
            yield maker.batch(number)
    finally:
        maker.close()


class _BatchByNumber(Dataset):
    """Batch ``j`` on demand, for DataLoader workers; each worker keeps its own reader state."""

    def __init__(self, maker: BatchMaker):
        self.maker = maker

    def __getitem__(self, number: int) -> Batch | DataError:
        try:
            return self.maker.batch(number)
        except DataError as error:   # returned, not raised: DataLoader would bury the message in a traceback
            return error


class _CountFrom(Sampler):
    """Batch numbers start, start + 1, ... without end; DataLoader hands them to workers in turn."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _in_workers(maker: BatchMaker, start_batch: int, num_workers: int) -> Iterator[Batch]:
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    loader = DataLoader(
        _BatchByNumber(maker), batch_size=None, sampler=_CountFrom(start_batch), num_workers=num_workers,
        multiprocessing_context=context, collate_fn=_as_is,
    )
    iterator = iter(loader)
    try:
        for batch in iterator:
            if isinstance(batch, DataError):
                raise DataError(str(batch))
            yield batch
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)   # stop the workers now, not at collection
        if shutdown is not None:
            shutdown()


def _as_is(batch: Batch) -> Batch:
    """The batch as the worker built it (default collation would try to convert it)."""
    return batch
