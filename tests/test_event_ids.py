"""Event ids (pacsguard.events.model.new_event_id): UUIDv7 layout (RFC 9562 5.7), unique, and
different in a forked child than in its parent although they come from Python's generator."""

from __future__ import annotations

import os

from pacsguard.events.model import new_event_id


def test_ids_have_the_uuidv7_layout_and_are_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:100]:
        assert len(value) == 32 and value[12] == "7" and value[16] in "89ab"


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out without running the parent's cleanup
        os.close(read)
        os.write(write, "".join(new_event_id()[16:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {data[i:i + 16] for i in range(0, len(data), 16)}
    parent = {new_event_id()[16:] for _ in range(50)}
    assert len(child) == 50 and not child & parent
