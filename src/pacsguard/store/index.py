"""Where events are stored and how they are found, shaped so that writing it costs little per event.

Four structures, all kept in the same transaction as the events they index and all checked by
`audit verify` against the sealed bodies:

- placement: the events table is keyed by `place` = (bucket, patient hash, seq within bucket), with
  bucket = seq >> BUCKET_BITS and the patient hash a 24-bit CRC-32 of the event's first patient ID.
  Within a bucket, an event sits next to that patient's other events, so "all events for patient
  X" reads one run of rows per bucket (153 at 10M events) instead of one page per event: on a store
  larger than memory that is the difference between ~300 and ~700 disk reads. New rows only land
  in the current bucket's part of the table, which stays in the page cache. `seq` has its own
  unique index for reading in order.
- other patients and studies: one row per (value, event), keyed (bucket, value, seq) so new rows
  land in the current bucket's part of the B-tree only; keyed (value, seq) alone, every batch
  would touch pages all over an index that grows with the store (measured with SQLite alone: from
  72k to 34k rows-per-event sets/s between 0.5M and 3M events). Only an event's second and
  further patient IDs get a row: its first is its placement.
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
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Sequence

from pacsguard.store.columns import patient_key, study_key, study_keys, term_key

#: Events per bucket of the patient and study indexes (2^16 = 65,536): a batch of 20,000 events
#: touches at most a bucket's worth of index pages; 2^19 measured 45k instead of 57k events/s.
BUCKET_BITS = 16

#: Bits of `place` that hold the patient hash. place < 2^63 leaves seqs below 2^(63 - 24) = 5.5e11.
PATIENT_HASH_BITS = 24
_HASH_MASK = (1 << PATIENT_HASH_BITS) - 1

KIND = "kind:"
ACTOR = "actor:"


def bucket_of(seq: int) -> int:
    return seq >> BUCKET_BITS


def patient_hash(patient_id: str) -> int:
    """The 24-bit hash that orders a bucket's events by patient (CRC-32 of the UTF-8 ID, low bits).
    Different patients may share it: searches compare the patient itself."""
    return zlib.crc32(patient_id.encode()) & _HASH_MASK


def place_of(seq: int, patient_id: str | None) -> int:
    """The key event *seq* is stored under: bucket, then the hash of its first patient (0 for none),
    then its seq within the bucket."""
    low = seq & ((1 << BUCKET_BITS) - 1)
    return ((seq - low) << PATIENT_HASH_BITS) | (patient_hash(patient_id) << BUCKET_BITS if patient_id else 0) | low


def patient_run(bucket: int, patient_id: str) -> tuple[int, int]:
    """The first and last place that events of *patient_id* in *bucket* can have."""
    lo = place_of(bucket << BUCKET_BITS, patient_id)
    return lo, lo | ((1 << BUCKET_BITS) - 1)


def placed_by(patient_ids: Sequence[str]) -> str | None:
    """The patient an event is placed by and listed under in the events table: its first, as the
    column holds it (columns.py: a key for one too long or holding U+0000)."""
    return patient_key(patient_ids[0]) if patient_ids else None


def other_patients(patient_ids: Sequence[str]) -> tuple[str, ...]:
    """An event's patient IDs after its first (the one it is placed by), each once, as
    event_patients holds them (columns.py)."""
    if len(patient_ids) < 2:
        return ()
    first = patient_key(patient_ids[0])
    return tuple(p for p in dict.fromkeys(patient_key(p) for p in patient_ids[1:]) if p != first)


def buckets_upto(size: int) -> list[int]:
    """Every bucket a store of *size* events can have rows in."""
    return list(range(bucket_of(max(size - 1, 0)) + 1))


@dataclass(slots=True)
class BatchIndex:
    """The index rows of one batch, added to event by event (in seq order) as the batch is sealed.
    The store, the migration and `audit verify` all build them this way."""

    first_seq: int
    patients: list[tuple[int, str, int]] = field(default_factory=list)  # (bucket, ID, seq): other_patients() only
    studies: list[tuple[int, str, int]] = field(default_factory=list)
    #: Offsets of the batch's events per distinct (kind, AE title, host, user): a batch from a dozen
    #: modalities has a dozen, so the terms are worked out per group, not per event.
    groups: dict[tuple[str, str | None, str | None, str | None], list[int]] = field(default_factory=dict)
    times: list[int] = field(default_factory=list)

    def add(self, seq: int, time_us: int, kind: str, ae_title: str | None, host: str | None, user: str | None,
            patient_ids: Sequence[str], study_uids: Sequence[str]) -> int:
        """Index one event and return its place."""
        key = (kind, ae_title, host, user)
        offsets = self.groups.get(key)
        if offsets is None:
            self.groups[key] = offsets = []
        offsets.append(seq - self.first_seq)
        self.times.append(time_us)
        if len(study_uids) == 1:
            self.studies.append((seq >> BUCKET_BITS, study_key(study_uids[0]), seq))
        elif study_uids:
            self.studies.extend((seq >> BUCKET_BITS, uid, seq) for uid in study_keys(study_uids))
        if len(patient_ids) > 1:
            self.patients.extend((seq >> BUCKET_BITS, pid, seq) for pid in other_patients(patient_ids))
        return place_of(seq, placed_by(patient_ids))

    @property
    def min_time(self) -> int | None:
        return min(self.times, default=None)

    @property
    def max_time(self) -> int | None:
        return max(self.times, default=None)

    def term_rows(self) -> list[tuple[int, str, int, bytes]]:
        """One posting row per term. An event's actor terms are its AE title, host and user, each
        once: `events search --actor X` matches any of them."""
        postings: dict[str, list[int]] = {}
        for (kind, ae_title, host, user), offsets in self.groups.items():
            for term in (KIND + kind, ACTOR + ae_title if ae_title else None,
                         ACTOR + host if host and host != ae_title else None,
                         ACTOR + user if user and user != ae_title and user != host else None):
                if term is not None:
                    postings.setdefault(term_key(term), []).extend(offsets)
        bucket = bucket_of(self.first_seq)
        return [(bucket, term, self.first_seq, _little_endian(array("I", sorted(offsets))))
                for term, offsets in postings.items()]


#: Bytes per offset of a posting list (unsigned 32-bit, little endian).
OFFSET_BYTES = 4


def decode_postings(first_seq: int, blob: bytes) -> list[int]:
    """The seqs a term row lists. ValueError, saying what is wrong, when the row cannot be one that
    `term_rows` wrote (a damaged page or a hand edit): a blob that is not whole offsets, or values
    of the wrong type (SQLite keeps whatever type a row was given)."""
    if not isinstance(first_seq, int) or isinstance(first_seq, bool):
        raise ValueError(f"its first seq is {first_seq!r}, not an integer")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"its posting list is {type(blob).__name__}, not bytes")
    if len(blob) % OFFSET_BYTES:
        raise ValueError(f"its posting list is {len(blob)} bytes long, not a whole number of "
                         f"{OFFSET_BYTES}-byte offsets")
    offsets = array("I")
    offsets.frombytes(blob)
    if _BIG_ENDIAN:
        offsets.byteswap()
    return [first_seq + o for o in offsets]


_BIG_ENDIAN = sys.byteorder == "big"


def _little_endian(offsets: array[int]) -> bytes:
    if _BIG_ENDIAN:
        offsets = array("I", offsets)
        offsets.byteswap()
    return offsets.tobytes()
