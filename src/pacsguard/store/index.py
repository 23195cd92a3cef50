"""The store's search index, shaped so that writing it costs little per event.

Three structures, all kept in the same transaction as the events they index and all checked by
`audit verify` against the sealed bodies:

- patients and studies: one row per (patient or study, event), as in any audit index, but keyed
  (bucket, value, seq) where bucket = seq >> BUCKET_BITS. New rows then land in the current
  bucket's part of the B-tree only, which stays small enough for the page cache at any store size;
  keyed (value, seq) alone, every batch would touch pages all over an index that grows with the
  store (measured with SQLite alone: from 72k to 34k rows-per-event sets/s between 0.5M and 3M
  events). A lookup costs one B-tree seek per bucket (153 at 10M events).
- terms (kinds and actors): per batch, one row per distinct term listing the batch's events that
  carry it (a posting list: offsets from the batch's first seq, 32-bit little endian). A batch of
  thousands of C-STOREs from a dozen modalities writes a few dozen rows instead of thousands of
  index entries per column.
- batches: the seq range and the time range of each stored batch, so a time-range search reads
  only the batches that overlap it (event times follow the order of storage closely, not exactly,
  so a per-event time index is not needed).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from typing import Sequence

#: Events per bucket of the patient and study indexes (2^16 = 65,536): a batch of 20,000 events
#: touches at most a bucket's worth of index pages; 2^19 measured 45k instead of 57k events/s.
BUCKET_BITS = 16

KIND = "kind:"
ACTOR = "actor:"


def bucket_of(seq: int) -> int:
    return seq >> BUCKET_BITS


def buckets_upto(size: int) -> list[int]:
    """Every bucket a store of *size* events can have rows in."""
    return list(range(bucket_of(max(size - 1, 0)) + 1))


@dataclass(slots=True)
class BatchIndex:
    """The index rows of one batch, added to event by event (in seq order) as the batch is sealed.
    The store, the migration and `audit verify` all build them this way."""

    first_seq: int
    patients: list[tuple[int, str, int]] = field(default_factory=list)
    studies: list[tuple[int, str, int]] = field(default_factory=list)
    postings: dict[str, array] = field(default_factory=dict)
    min_time: int | None = None
    max_time: int | None = None

    def add(self, seq: int, time_us: int, kind: str, ae_title: str | None, host: str | None, user: str | None,
            patient_ids: Sequence[str], study_uids: Sequence[str]) -> None:
        """Index one event. Its actor terms are its AE title, host and user, each once: `events search
        --actor X` matches any of them."""
        offset = seq - self.first_seq
        postings = self.postings
        for term in (KIND + kind, ACTOR + ae_title if ae_title else None,
                     ACTOR + host if host and host != ae_title else None,
                     ACTOR + user if user and user != ae_title and user != host else None):
            if term is not None:
                offsets = postings.get(term)
                if offsets is None:
                    postings[term] = offsets = array("I")
                offsets.append(offset)
        bucket = seq >> BUCKET_BITS
        if len(patient_ids) == 1:
            self.patients.append((bucket, patient_ids[0], seq))
        elif patient_ids:
            self.patients.extend((bucket, pid, seq) for pid in dict.fromkeys(patient_ids))
        if len(study_uids) == 1:
            self.studies.append((bucket, study_uids[0], seq))
        elif study_uids:
            self.studies.extend((bucket, uid, seq) for uid in dict.fromkeys(study_uids))
        if self.min_time is None or time_us < self.min_time:
            self.min_time = time_us
        if self.max_time is None or time_us > self.max_time:
            self.max_time = time_us

    def term_rows(self) -> list[tuple[int, str, int, bytes]]:
        bucket = bucket_of(self.first_seq)
        return [(bucket, term, self.first_seq, _little_endian(offsets)) for term, offsets in self.postings.items()]


def decode_postings(first_seq: int, blob: bytes) -> list[int]:
    offsets = array("I")
    offsets.frombytes(blob)
    if _BIG_ENDIAN:
        offsets.byteswap()
    return [first_seq + o for o in offsets]


_BIG_ENDIAN = sys.byteorder == "big"


def _little_endian(offsets: array) -> bytes:
    if _BIG_ENDIAN:
        offsets = array("I", offsets)
        offsets.byteswap()
    return offsets.tobytes()
