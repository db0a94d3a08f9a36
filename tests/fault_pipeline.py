"""A pipeline process for the fault tests (``tests/test_faults.py``): real nodes, real exits.

Run as ``python tests/fault_pipeline.py COMMAND [options]``. Every node writes, as the first
thing its body does, ``S <run_id> <pid>`` to the *started file* (``os.write`` on an
``O_APPEND`` descriptor, then ``fsync``), and the code around the node writes
``E <run_id> <STATUS>`` once the decorator has returned or re-raised. So the test knows every
run whose body began (it cannot miss one: the line is durable before the body goes on) and,
for the runs whose decorator finished, the status the sinks must show.

Commands:

``loop``
    run nodes until ``--nodes`` were run (0: forever) or ``--stop-file`` exists;
``zygote``
    import everything once, then for each ``spawn TRIAL SEED`` line on stdin fork a child that
    configures odibi-observe and runs ``loop`` forever (the test kills it); prints
    ``spawned TRIAL PID``. Forking a warm process makes a SIGKILL trial cost milliseconds;
``sigterm`` / ``os_exit`` / ``thread_exception``
    one node completes, then: a node sleeps until SIGTERM / a node calls ``os._exit(3)`` / a
    node in a thread raises, uncaught, and the main thread runs one more node;
``hang``
    one node that sleeps until ``--stop-file`` exists (for SIGSTOP and heartbeats);
``fork``
    configure, then ``multiprocessing`` (fork start method) children each run nodes.

Options choose the configuration: ``--mode``, ``--catalog``, ``--traces-file``,
``--spool-dir``, ``--heartbeat``, ``--textfile``. The OTLP endpoint, if any, comes from the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from typing import Any

import odibi_observe as oo

_started_fd: int | None = None


def _open_started(path: str) -> None:
    global _started_fd
    if _started_fd is not None:
        os.close(_started_fd)
    _started_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


_started_fsync = True


def note(line: str) -> None:
    """Append one line to the started file, durably, before the caller goes on (without the
    fsync, ``--started-fsync never``: for a writer that is never killed, only fast)."""
    assert _started_fd is not None
    os.write(_started_fd, (line + "\n").encode())
    if _started_fsync:
        os.fsync(_started_fd)


def begin() -> str:
    """First statement of every node body: say this run has started."""
    run = oo.current_run()
    assert run, "the node runs without a current run"
    note(f"S {run.run_id} {os.getpid()}")
    _last.run_id = str(run.run_id)
    return str(run.run_id)


_last = threading.local()


def _last_run_id() -> str:
    """The run the current thread's latest node body began (for the ``E`` line)."""
    return str(_last.run_id)


def configure(args: argparse.Namespace, **extra: Any) -> None:
    settings: dict[str, Any] = dict(
        project="faults", mode=args.mode, heartbeat_interval=args.heartbeat, strict=True
    )
    if args.catalog:
        settings["catalog_url"] = args.catalog
    if args.traces_file:
        settings["traces_file"] = args.traces_file
    if args.spool_dir:
        settings["spool_dir"] = args.spool_dir
        settings["spool_fsync"] = args.spool_fsync
    if args.textfile:
        settings["prometheus_textfile"] = args.textfile
    settings.update(extra)
    observer = oo.configure(**settings)
    if args.spool_segment_bytes:  # small segments: one process writes many of them
        for sink in observer.sinks:
            spool = getattr(sink, "spool", None)
            if spool is not None:
                spool.segment_bytes = args.spool_segment_bytes


def ready(args: argparse.Namespace) -> None:
    if args.mode == "background":
        oo.flush(10)  # the RUNNING row (and earlier runs) are in the sinks
    print("ready", flush=True)


# -- loop ------------------------------------------------------------------------------------


def run_loop(args: argparse.Namespace, rng: random.Random) -> int:
    blob = "x" * args.payload

    @oo.observe_node(pipeline=args.pipeline)
    def step(i: int) -> list[int]:
        begin()
        if blob:
            oo.current_run().set_attribute("blob", blob)
        if args.sleep > 0:
            time.sleep(rng.uniform(0, args.sleep))
        if rng.random() < args.fail_rate:
            raise ValueError(f"step {i} failed on purpose")
        return list(range(rng.randint(0, 5)))

    i = 0
    while args.nodes == 0 or i < args.nodes:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.pause_file and i == args.pause_at:
            oo.flush(1)  # writes --textfile: the counters as they are now
            print(f"paused {i}", flush=True)
            while not os.path.exists(args.pause_file):
                time.sleep(0.01)
        try:
            step(i)
            status = "SUCCESS"
        except ValueError:
            status = "FAILURE"
        run = _last_run_id()
        note(f"E {run} {status}")
        i += 1
        if args.gap > 0:
            time.sleep(args.gap)
    print(f"done {i}", flush=True)
    return i


def cmd_loop(args: argparse.Namespace) -> int:
    _open_started(args.started)
    configure(args)
    print("ready", flush=True)
    run_loop(args, random.Random(args.seed))
    if args.hold_file:  # stay alive (no flush, no exit) until the test has looked
        while not os.path.exists(args.hold_file):
            time.sleep(0.01)
    return 0


# -- zygote ----------------------------------------------------------------------------------


def cmd_zygote(args: argparse.Namespace) -> int:
    # Children are reaped by the kernel: a zombie would still answer kill(pid, 0), and the
    # sweeper would rightly think its run alive.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("zygote ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "exit":
            break
        _, trial, seed = parts
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sys.stdin.close()
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                args.started = os.path.join(args.started_dir, f"trial-{trial}.log")
                args.seed = int(seed)
                args.nodes = 0
                _open_started(args.started)
                configure(args)
                run_loop(args, random.Random(int(seed)))
                code = 0
            finally:
                os._exit(code)
        print(f"spawned {trial} {pid}", flush=True)
    return 0


# -- exit paths ------------------------------------------------------------------------------


def cmd_exit(args: argparse.Namespace) -> int:
    _open_started(args.started)
    configure(args)

    @oo.observe_node(pipeline="exits")
    def first() -> list[int]:
        begin()
        return [1, 2, 3]

    first()
    note(f"E {_last_run_id()} SUCCESS")

    if args.command == "sigterm":

        @oo.observe_node(pipeline="exits")
        def waits_for_sigterm() -> None:
            begin()
            ready(args)
            time.sleep(60)

        waits_for_sigterm()
        return 9  # not reached: SIGTERM ends the process

    if args.command == "os_exit":

        @oo.observe_node(pipeline="exits")
        def exits_hard() -> None:
            begin()
            if args.mode == "background":
                oo.flush(10)
            print("ready", flush=True)
            os._exit(3)

        exits_hard()
        return 9  # not reached

    # thread_exception: the thread's node raises and nobody catches it
    @oo.observe_node(pipeline="exits")
    def raises_in_thread() -> None:
        begin()
        raise RuntimeError("worker thread blew up")

    def worker() -> None:
        try:
            raises_in_thread()
        finally:
            note(f"E {_last_run_id()} FAILURE")

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    thread.join()

    @oo.observe_node(pipeline="exits")
    def after_the_thread() -> list[int]:
        begin()
        return [1]

    after_the_thread()
    note(f"E {_last_run_id()} SUCCESS")
    print("ready", flush=True)
    return 0


def cmd_hang(args: argparse.Namespace) -> int:
    _open_started(args.started)
    configure(args)

    @oo.observe_node(pipeline="hang")
    def long_step() -> list[int]:
        begin()
        ready(args)
        while not os.path.exists(args.stop_file):
            time.sleep(0.02)
        return [1]

    long_step()
    note(f"E {_last_run_id()} SUCCESS")
    return 0


# -- fork ------------------------------------------------------------------------------------


def _fork_child(args: argparse.Namespace, index: int) -> None:
    rng = random.Random(index)
    for i in range(args.nodes):

        @oo.observe_node(pipeline="forked")
        def child_node(i: int) -> list[int]:
            begin()
            if rng.random() < 0.25:
                raise ValueError(f"child {index} node {i} failed")
            return list(range(i))

        try:
            child_node(i)
            note(f"E {_last_run_id()} SUCCESS")
        except ValueError:
            note(f"E {_last_run_id()} FAILURE")


def cmd_fork(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    _open_started(args.started)
    configure(args)

    @oo.observe_node(pipeline="forked")
    def parent_before() -> list[int]:
        begin()
        return [1]

    parent_before()
    note(f"E {_last_run_id()} SUCCESS")
    with oo.node_run("forked", "parent_during") as run:
        note(f"S {run.run_id} {os.getpid()}")
        _last.run_id = run.run_id
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_fork_child, args=(args, k)) for k in range(args.children)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        codes = [p.exitcode for p in procs]
    note(f"E {_last_run_id()} SUCCESS")
    print(f"children {codes}", flush=True)
    return 0 if all(c == 0 for c in codes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "command",
        choices=["loop", "zygote", "sigterm", "os_exit", "thread_exception", "hang", "fork"],
    )
    parser.add_argument("--mode", default="sidecar")
    parser.add_argument("--catalog")
    parser.add_argument("--traces-file")
    parser.add_argument("--spool-dir")
    parser.add_argument("--spool-fsync", default="interval")
    parser.add_argument("--spool-segment-bytes", type=int, default=0)
    parser.add_argument("--textfile")
    parser.add_argument("--heartbeat", type=float, default=0.0)
    parser.add_argument("--started", help="the started file")
    parser.add_argument("--started-dir", help="zygote: one started file per trial here")
    parser.add_argument("--pipeline", default="faults")
    parser.add_argument("--nodes", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="max seconds a node sleeps")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between nodes")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--payload", type=int, default=0, help="size of a string attribute")
    parser.add_argument("--stop-file")
    parser.add_argument("--pause-file", help="loop: before node --pause-at, wait for it")
    parser.add_argument("--pause-at", type=int, default=-1)
    parser.add_argument("--hold-file", help="loop: after the last node, wait for it to exit")
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--started-fsync", choices=["always", "never"], default="always")
    args = parser.parse_args(argv)
    global _started_fsync
    _started_fsync = args.started_fsync == "always"
    commands = {"loop": cmd_loop, "zygote": cmd_zygote, "hang": cmd_hang, "fork": cmd_fork}
    return commands.get(args.command, cmd_exit)(args)


if __name__ == "__main__":
    sys.exit(main())
