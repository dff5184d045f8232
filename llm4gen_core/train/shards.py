"""WebDataset ``.tar`` shards, streamed with the standard ``tarfile`` module.

A sample is a run of consecutive tar members sharing a key (the member name up to the first dot
of its base name): an image (jpg, jpeg, png, webp) plus ``txt`` (the caption) and/or ``json``
(``text`` or ``caption``, optional ``pairs``).

Each shard is read in two steps: an index pass over the tar headers only (the seek skips every
member's data), then one member at a time, read at its offset when its sample is loaded. Memory
holds one shard's headers (about 100 bytes a sample) and one sample's bytes, never a shard's
data. Skipping samples, to resume or to leave another worker's batches, seeks past their data
without reading it. Uncompressed ``.tar`` shards seek; a ``.tar.gz`` works too, but every seek
in it decompresses, so each pass costs a full read.

Order: each epoch shuffles the shard order from the seed. With at least as many shards as
processes, each process (rank) reads whole shards (every ``world_size``-th of the epoch's
order); with fewer, every process reads every shard and takes the samples whose index in the
epoch is its rank modulo ``world_size``. Samples keep their order inside a shard (no shuffle
buffer: web-scale shards are written already shuffled).

Data-loader workers do not divide the shards among themselves: that would make the sequence
depend on their number. Each worker builds whole batches of its rank's one sequence (see
:mod:`.data`), so each reads the headers of all its rank's shards, and the data of its own
batches only.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
import random
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import DataError
from .folder import caption_of, parse_pairs
from .images import MAX_IMAGE_BYTES, TOO_LARGE, ImageProblem, ImageRules, decode_image
from .samples import Example, Skipped, mixed_seed, sample_rng

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")
# A caption file larger than this is not a caption.
MAX_CAPTION_BYTES = 1 << 20
# Shard indexes kept in memory per process: the one being read and the one a lookahead opened.
INDEXES_KEPT = 2
# A process that meets this many epochs in a row without one sample stops instead of spinning.
MAX_EMPTY_EPOCHS = 64

# Reasons a sample (or a whole shard) is skipped.
NO_IMAGE = "no image"
NO_CAPTION = "no caption"
BAD_CAPTION = "bad caption"
TRUNCATED = "truncated shard member"
UNREADABLE_SHARD = "unreadable shard"
MISSING_SHARD = "missing shard"

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``data-{000..002}.tar`` -> 3 names (zero padding kept); ``{a,b}`` -> both; several braces multiply."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = _RANGE.match(body)
    if numeric:
        low, high = numeric.group(1), numeric.group(2)
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        step = 1 if int(high) >= int(low) else -1
        choices = [str(n).zfill(width) for n in range(int(low), int(high) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [pattern]   # a literal brace, as in a file name
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def expand_shard_spec(spec) -> tuple[list[str], list[str]]:
    """(existing shard paths in order, names the spec gave that do not exist)."""
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        for name in expand_braces(os.fspath(pattern)):
            if glob.has_magic(name):
                matches = sorted(path for path in glob.glob(name) if os.path.isfile(path))
                if not matches:
                    missing.append(name)
                found.extend(matches)
            elif os.path.isfile(name):
                found.append(name)
            else:
                missing.append(name)
    return list(dict.fromkeys(found)), missing


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.jpg`` -> ("dir/000123", "jpg"); None for a name without an extension."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


@dataclass
class Group:
    """One sample's members: extension -> (data offset, size) of the first member of each kind."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class ShardIndex:
    groups: list[Group]
    problem: str = ""   # why reading the headers stopped early; the groups before it are usable


def index_shard(path: str) -> ShardIndex:
    """The samples of a shard from its headers alone; a damaged shard keeps what precedes the damage."""
    groups: list[Group] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()   # tarfile remembers every header; a shard's worth is not needed
                parts = split_member_name(member.name) if member.isreg() else None
                if parts is None:
                    continue
                key, extension = parts
                if not groups or groups[-1].key != key:
                    groups.append(Group(key))
                if extension in IMAGE_EXTENSIONS + CAPTION_EXTENSIONS:
                    groups[-1].members.setdefault(extension, (member.offset_data, member.size))
    except Exception as error:  # untrusted file: any failure ends the shard, never the run
        return ShardIndex(groups, f"{type(error).__name__}: {error}")
    return ShardIndex(groups)


@dataclass
class EpochPlan:
    """This rank's shards in one epoch, counted lazily: ``ends`` grows as shards are indexed."""

    epoch: int
    start: int                  # first slot of the epoch
    shards: list[int]           # shard numbers, in this epoch's order, this rank reads
    ends: list[int] = field(default_factory=list)        # slot after each counted shard's last
    offsets: list[int] = field(default_factory=list)     # samples of the epoch before each shard (all ranks)

    @property
    def complete(self) -> bool:
        return len(self.ends) == len(self.shards)

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else self.start


class ShardDataset:
    """WebDataset shards: a file, a glob, a brace pattern (or a list of these)."""

    def __init__(self, spec, rules: ImageRules):
        self.spec, self.rules = spec, rules
        self.shards, missing = expand_shard_spec(spec)
        self.index_skips: list[tuple[str, str]] = [(name, MISSING_SHARD) for name in missing]
        if not self.shards:
            raise DataError(f"{spec}: no shard file matches; give a .tar file, a glob (shards/*.tar) "
                            "or a brace pattern (data-{000..009}.tar)")
        base_names = [os.path.basename(path) for path in self.shards]
        unique = len(set(base_names)) == len(base_names)
        self.names = base_names if unique else list(self.shards)

    def stream(self, *, rank: int, world_size: int, seed: int) -> ShardStream:
        return ShardStream(self, rank=rank, world_size=world_size, seed=seed)


class ShardStream:
    """This rank's endless sequence of samples ("slots") over the shards, epoch after epoch."""

    def __init__(self, dataset: ShardDataset, *, rank: int, world_size: int, seed: int):
        self.dataset, self.rank, self.world_size, self.seed = dataset, rank, world_size, seed
        self.by_shard = len(dataset.shards) >= world_size
        self._counts: dict[int, int] = {}                 # shard -> samples (all ranks), once indexed
        self._shard_problems: dict[int, str] = {}         # shard -> why its index ended early
        self._problems: dict[int, list[Skipped]] = {}     # slot position -> shard problems there
        self._starts: list[int] = [0]                     # first slot of each epoch planned so far
        self._plans: OrderedDict[int, EpochPlan] = OrderedDict()
        self._indexes: OrderedDict[int, ShardIndex] = OrderedDict()
        self._open_shard, self._open_file = -1, None

    # -- where a slot is ---------------------------------------------------------------------

    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.dataset.shards)))
        random.Random(mixed_seed(self.seed, "shards", epoch)).shuffle(order)
        return order[self.rank :: self.world_size] if self.by_shard else order

    def _plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans[epoch] = EpochPlan(epoch, self._starts[epoch], self._shard_order(epoch))
            while len(self._plans) > 2:
                self._plans.popitem(last=False)
        return self._plans[epoch]

    def _mine(self, offset: int, count: int) -> tuple[int, int]:
        """(first ordinal in the shard this rank takes, how many) for a shard at ``offset`` in the epoch."""
        if self.by_shard:
            return 0, count
        first = (self.rank - offset) % self.world_size
        return first, max(0, (count - first + self.world_size - 1) // self.world_size)

    def _count_next(self, plan: EpochPlan) -> None:
        """Index the next uncounted shard of ``plan`` and record where its slots end."""
        number = plan.shards[len(plan.ends)]
        if number not in self._counts:
            self._index(number)
        offset = (plan.offsets[-1] + self._counts[plan.shards[len(plan.ends) - 1]]) if plan.ends else 0
        mine = self._mine(offset, self._counts[number])[1]
        plan.offsets.append(offset)
        plan.ends.append(plan.end + mine)
        if self._shard_problems.get(number):
            problem = Skipped(self.dataset.names[number], UNREADABLE_SHARD, self._shard_problems[number])
            self._problems.setdefault(plan.end, [])
            if problem not in self._problems[plan.end]:
                self._problems[plan.end].append(problem)

    def _plan_reaching(self, slot: int) -> EpochPlan:
        """The plan of the epoch holding ``slot``, counted far enough to hold it."""
        empty_in_a_row = 0
        while True:
            epoch = bisect.bisect_right(self._starts, slot) - 1
            plan = self._plan(epoch)
            while plan.end <= slot and not plan.complete:
                self._count_next(plan)
            if plan.end > slot:
                return plan
            if epoch + 1 == len(self._starts):     # epoch complete, slot beyond it: plan the next
                self._starts.append(plan.end)
            empty_in_a_row = empty_in_a_row + 1 if plan.end == plan.start else 0
            if empty_in_a_row >= MAX_EMPTY_EPOCHS:
                raise DataError(
                    f"{self.dataset.spec}: process {self.rank} of {self.world_size} found no sample in "
                    f"{MAX_EMPTY_EPOCHS} epochs in a row; the shards hold no readable samples "
                    "(or fewer than there are processes)")

    def epoch_of(self, slot: int) -> tuple[int, int]:
        plan = self._plan_reaching(slot)
        return plan.epoch, plan.start

    def epoch_end(self, epoch: int) -> int:
        plan = self._plan(epoch)
        while not plan.complete:
            self._count_next(plan)
        return plan.end

    def problems_between(self, first: int, end: int) -> list[Skipped]:
        """Shard problems placed in slots [first, end): where the damaged shard's samples end."""
        self._plan_reaching(end - 1)
        return [problem for position in range(first, end) for problem in self._problems.get(position, [])]

    # -- reading a slot ----------------------------------------------------------------------

    def load(self, slot: int):
        plan = self._plan_reaching(slot)
        position = bisect.bisect_right(plan.ends, slot)
        number = plan.shards[position]
        before = plan.ends[position - 1] if position else plan.start
        first, _ = self._mine(plan.offsets[position], self._counts[number])
        ordinal = first + (slot - before) * (1 if self.by_shard else self.world_size)
        groups = self._index(number).groups
        if ordinal >= len(groups):   # indexed again after eviction, and the file has changed since
            key = f"{self.dataset.names[number]}:#{ordinal}"
            return Skipped(key, UNREADABLE_SHARD, "the shard changed during the run")
        return self._load_group(number, groups[ordinal], plan.epoch)

    def _index(self, number: int) -> ShardIndex:
        if number in self._indexes:
            self._indexes.move_to_end(number)
        else:
            self._indexes[number] = index_shard(self.dataset.shards[number])
            self._counts[number] = len(self._indexes[number].groups)
            self._shard_problems[number] = self._indexes[number].problem
            while len(self._indexes) > INDEXES_KEPT:
                self._indexes.popitem(last=False)
        return self._indexes[number]

    def _read(self, number: int, offset: int, size: int) -> bytes:
        if number != self._open_shard:
            self.close()
            self._open_file = tarfile.open(self.dataset.shards[number], "r:*")
            self._open_shard = number
        handle = self._open_file.fileobj
        handle.seek(offset)
        return handle.read(size)

    def _load_group(self, number: int, group: Group, epoch: int):
        key = f"{self.dataset.names[number]}:{group.key}"
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in group.members), None)
        if extension is None:
            return Skipped(key, NO_IMAGE, f"members: {sorted(group.members) or 'none usable'}")
        offset, size = group.members[extension]
        if size > MAX_IMAGE_BYTES:
            return Skipped(key, TOO_LARGE, f"{size} bytes, more than {MAX_IMAGE_BYTES}")
        try:
            data = self._read(number, offset, size)
            if len(data) < size:
                return Skipped(key, TRUNCATED, f".{extension}: {len(data)} of {size} bytes present")
            caption = self._caption(number, group)
        except Exception as error:  # the shard changed or broke since it was indexed
            return Skipped(key, UNREADABLE_SHARD, f"{type(error).__name__}: {error}")
        if isinstance(caption, Skipped):
            return Skipped(key, caption.reason, caption.detail)
        image = decode_image(data, self.dataset.rules, sample_rng(self.seed, epoch, key))
        if isinstance(image, ImageProblem):
            return Skipped(key, image.reason, image.detail)
        text, pairs = caption
        return Example(image.pixels, text, pairs, key, image.original_size, image.crop_top_left)

    def _caption(self, number: int, group: Group):
        """(text, pairs) from the txt and/or json members, or a Skipped without key."""
        text, pairs = None, []
        for extension in CAPTION_EXTENSIONS:
            if extension not in group.members:
                continue
            offset, size = group.members[extension]
            if size > MAX_CAPTION_BYTES:
                return Skipped("", BAD_CAPTION, f".{extension} holds {size} bytes")
            data = self._read(number, offset, size)
            if len(data) < size:
                return Skipped("", TRUNCATED, f".{extension}: {len(data)} of {size} bytes present")
            try:
                decoded = data.decode("utf-8")
                if extension == "txt":
                    text = decoded.strip()
                    continue
                entry = json.loads(decoded)
            except ValueError as error:
                return Skipped("", BAD_CAPTION, f".{extension}: {error}")
            if not isinstance(entry, dict):
                return Skipped("", BAD_CAPTION, ".json is not an object")
            parsed = parse_pairs(entry.get("pairs"))
            if parsed is None:
                return Skipped("", BAD_CAPTION, ".json pairs must be [[entity, attribute], ...]")
            pairs = parsed
            if text is None:
                text = caption_of(entry)
        if text is None:
            return Skipped("", NO_CAPTION, "no .txt and no text/caption in .json")
        return text, pairs

    def close(self) -> None:
        if self._open_file is not None:
            self._open_file.close()
        self._open_shard, self._open_file = -1, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open_shard"], state["_open_file"] = -1, None   # a worker opens its own file
        return state
