"""How many bad samples a run met, by reason (:class:`SkipTally`).

A web-scale set always holds some broken images; training skips them and says so. When most of
what a run reads is bad, the data itself is wrong (a wrong folder, a failed download) and the run
stops with a :class:`DataError` instead of training on the few samples that happen to work.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..errors import DataError
from .samples import Skipped

# check() fires only once this many samples were seen: two bad files out of three is no verdict.
MIN_SEEN_FOR_CHECK = 8
# Keys shown per reason in summary(): enough to find the files, short enough for a log line.
EXAMPLES_PER_REASON = 3



class SkipTally:
    """Counts skipped samples by reason across the run, each bad key once.

    ``seen`` counts the samples a run met: one per place in a batch (a bad sample's place is
    filled by a good one, so a batch of ``b`` covers ``b`` samples of the data's order, bad ones
    included), plus the problems added with :meth:`add_skipped`. A bad file met again in a later
    epoch is one bad key. Ranks keep their own tally and combine plain dicts (:meth:`to_dict`,
    :meth:`from_dict`, :meth:`merge`), which is what ``all_gather_object`` carries. Memory grows
    with the number of distinct bad keys (about 150 bytes each), not with the size of the data.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.bad: dict[str, str] = {}   # key -> reason, in the order first met

    def add(self, batch) -> None:
        """Count one batch: its places, and the bad samples met while filling it."""
        self.seen += len(batch.keys)
        self._record(batch.skipped)

    def add_skipped(self, skipped: Iterable) -> None:
        """Count problems found outside batches (``dataset.index_skips``: one rank only), each as a
        sample met; items are ``(key, reason)`` pairs or :class:`Skipped`."""
        self.seen += self._record(skipped)

    def _record(self, skipped: Iterable) -> int:
        new = 0
        for item in skipped:
            key, reason = (item.key, item.reason) if isinstance(item, Skipped) else item
            if key not in self.bad:
                self.bad[key] = reason
                new += 1
        return new

    def merge(self, other: SkipTally) -> SkipTally:
        """Add another rank's tally to this one; a bad key both met counts once."""
        self.seen += other.seen
        self._record(other.bad.items())
        return self

    def to_dict(self) -> dict:
        return {"seen": self.seen, "bad": dict(self.bad)}

    @classmethod
    def from_dict(cls, data: dict) -> SkipTally:
        tally = cls()
        tally.seen = int(data.get("seen", 0))
        tally.bad = {str(key): str(reason) for key, reason in dict(data.get("bad", {})).items()}
        return tally

    def by_reason(self) -> Counter:
        return Counter(self.bad.values())

    def summary(self) -> str:
        """A few lines for the log: counts by reason, then the first keys of each."""
        if not self.bad:
            return f"skipped 0 of {self.seen} samples"
        counts = self.by_reason().most_common()
        lines = [f"skipped {len(self.bad)} of {self.seen} samples: " + ", ".join(f"{n} {r}" for r, n in counts)]
        for reason, count in counts:
            keys = [key for key, why in self.bad.items() if why == reason][:EXAMPLES_PER_REASON]
            more = ", ..." if count > len(keys) else ""
            lines.append(f"  {reason} (first: {', '.join(keys)}{more})")
        return "\n".join(lines)

    def check(self, seen: int | None = None) -> None:
        """Raise :class:`DataError` when more than half of the samples seen so far were bad.

        ``seen`` defaults to the tally's own count; a caller that counts differently may pass it.
        """
        seen = self.seen if seen is None else seen
        bad = len(self.bad)
        if seen >= MIN_SEEN_FOR_CHECK and 2 * bad > seen:
            raise DataError(
                f"most of the data is bad: {self.summary()}\n"
                "check the data folder / shards (right path? images fully downloaded?)"
            )
