"""Custom Odibi transform steps of the test project (auto-loaded by Odibi from the project dir)."""

from pathlib import Path

from odibi.registry import transform


@transform
def add_tag(context, tag: str, current=None):
    """A plain custom step: tag every row."""
    df = current.copy()
    df["tag"] = tag
    return df


@transform
def flaky_once(context, marker: str, current=None):
    """Fails the first time it runs (until ``marker`` exists), then succeeds."""
    flag = Path(marker)
    if not flag.exists():
        flag.write_text("failed once\n")
        raise ConnectionError("warehouse connection reset by peer")
    return current


@transform
def always_times_out(context, current=None):
    """Fails on every attempt."""
    raise TimeoutError("upstream API did not answer within 30 s")


@transform
def interrupt(context, current=None):
    """What an operator's Ctrl-C does in the middle of a step."""
    raise KeyboardInterrupt("operator pressed Ctrl-C while publishing")


@transform
def hang(context, marker: str, current=None):
    """A step that never finishes: says it has started, then waits to be killed."""
    import time

    Path(marker).write_text("started\n")
    time.sleep(120)
    return current


@transform
def busy_background_then_hang(context, marker: str, current=None):
    """Leaves a daemon thread inside pyarrow's C++ code (reading a CSV stream that never
    ends), as Odibi's own background catalog updates can be when the run ends; says it has
    started, then waits for Ctrl-C."""
    import threading
    import time

    import pyarrow.csv as pcsv

    class EndlessCsv:
        closed = False

        def read(self, size=-1):
            time.sleep(0.01)
            return b"a,b\n1,2\n" * 10

        def readable(self):
            return True

        def seekable(self):
            return False

        def writable(self):
            return False

        def close(self):
            pass

        def tell(self):
            return 0

    def read_forever():
        pcsv.read_csv(EndlessCsv())

    threading.Thread(target=read_forever, name="background-read", daemon=True).start()
    Path(marker).write_text("started\n")
    time.sleep(120)
    return current
