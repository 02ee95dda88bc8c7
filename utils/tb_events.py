"""TensorBoard event files (as tensorboardX writes them): read them, and cut a resumed run's
files back to the last checkpoint so that no step is ever recorded twice.

A run killed mid-epoch has already logged the iterations after its last checkpoint; the resumed
run logs them again. TensorBoard's own remedy (``purge_step``) only hides the old events in the
viewer; here the old files are rewritten without them (each through a temporary file and a
rename), and ``purge_step`` is passed as well.
"""
from __future__ import annotations

import glob
import os
import struct
import uuid
from typing import Iterator


def _records(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                return  # a record cut short by a crash: the rest is unreadable anyway
            yield data


def _frame(data: bytes) -> bytes:
    from tensorboardX.record_writer import masked_crc32c

    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


def read_scalars(folder: str) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files of ``folder``, in file order."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*"))):
        for data in _records(path):
            ev = Event.FromString(data)
            for v in ev.summary.value:
                out.append((v.tag, ev.step, v.simple_value))
    return out


def drop_steps_from(folder: str, first_step: int) -> int:
    """Remove the scalar events with step >= ``first_step`` from the event files of ``folder``;
    return how many were removed. Files without such events are not touched."""
    from tensorboardX.proto.event_pb2 import Event

    removed = 0
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*"))):
        keep, dropped = [], 0
        for data in _records(path):
            ev = Event.FromString(data)
            if ev.HasField("summary") and ev.step >= first_step:
                dropped += 1
            else:
                keep.append(data)
        if not dropped:
            continue
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex[:8]}.tfevents")
        with open(tmp, "xb") as f:
            for data in keep:
                f.write(_frame(data))
        os.replace(tmp, path)
        removed += dropped
    return removed
