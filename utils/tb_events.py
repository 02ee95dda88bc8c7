"""TensorBoard event files: write scalars, read them, and cut a resumed run's files back to its
checkpoint so that no step is ever recorded twice.

:class:`ScalarWriter` writes synchronously: what :meth:`ScalarWriter.flush` returns from is in
the file, so a run killed after a checkpoint has every step up to it on disk (tensorboardX's
SummaryWriter queues events for a thread, and its flush does not wait for that queue).

A run killed after a checkpoint has already logged some iterations after it; the resumed run
logs them again. The old files are rewritten without them (each through a temporary file and a
rename), rather than hidden in the viewer as TensorBoard's ``purge_step`` would.
"""
from __future__ import annotations

import glob
import os
import socket
import struct
import time
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


class ScalarWriter:
    """Scalars into a new event file in ``folder`` (made if missing), written as they come."""

    def __init__(self, folder: str) -> None:
        from tensorboardX.proto.event_pb2 import Event

        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "xb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._file.write(_frame(event.SerializeToString()))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._write(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
