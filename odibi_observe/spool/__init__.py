"""The write-ahead spool: run events on local disk, safe from the death of the process.

The event bus makes delivery survive a *sink* (a dead collector, a hung database); it cannot make
it survive the *process*: a pipeline killed by SIGKILL or the OOM killer takes its queues with
it. The spool closes that gap. Pipeline processes append each event to a file on local disk
before anything else happens to it, and a consumer (the per-host sidecar) reads the files at its
own pace, one durable cursor per sink, so a sink that is down for an hour only delays itself.

This package face hands on the names callers use; each concept has its own module (directory
layout in ``core``, frame format in ``frames``, durability and size policy in ``writer``,
delivery in ``cursor``, loss accounting in ``damage``).
"""

from odibi_observe.spool.core import Spool
from odibi_observe.spool.cursor import SpoolCursor, SpoolEntry, SpoolPosition
from odibi_observe.spool.cursor_files import CURSOR_RESERVE
from odibi_observe.spool.damage import (
    DAMAGE_LOG,
    DAMAGE_LOG_MAX_BYTES,
    SpoolDamage,
    read_damage_log,
)
from odibi_observe.spool.frames import HEADER_SIZE, MAGIC, MAX_PAYLOAD, encode_frame
from odibi_observe.spool.liveness import process_alive, process_start_ns, writer_pid
from odibi_observe.spool.metrics import SpoolStats
from odibi_observe.spool.segments import FsyncPolicy
from odibi_observe.spool.writer import SpoolFullError

__all__ = [
    "CURSOR_RESERVE",
    "DAMAGE_LOG",
    "DAMAGE_LOG_MAX_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD",
    "FsyncPolicy",
    "Spool",
    "SpoolCursor",
    "SpoolDamage",
    "SpoolEntry",
    "SpoolFullError",
    "SpoolPosition",
    "SpoolStats",
    "encode_frame",
    "process_alive",
    "process_start_ns",
    "read_damage_log",
    "writer_pid",
]
