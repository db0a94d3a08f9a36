"""Custom Odibi transform steps of the test project (auto-loaded by Odibi from the project dir)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from odibi.registry import transform as _odibi_transform

_Step = TypeVar("_Step", bound=Callable[..., Any])


def transform(step: _Step) -> _Step:
    """Odibi's ``@transform`` with its type spelled out: Odibi ships no type information, and
    its decorator returns a ``functools.wraps`` wrapper with the step's own signature."""
    registered: _Step = _odibi_transform(step)
    return registered


@transform
def add_tag(context: Any, tag: str, current: Any = None) -> Any:
    """A plain custom step: tag every row."""
    df = current.copy()
    df["tag"] = tag
    return df


@transform
def flaky_once(context: Any, marker: str, current: Any = None) -> Any:
    """Fails the first time it runs (until ``marker`` exists), then succeeds."""
    flag = Path(marker)
    if not flag.exists():
        flag.write_text("failed once\n")
        raise ConnectionError("warehouse connection reset by peer")
    return current


@transform
def always_times_out(context: Any, current: Any = None) -> Any:
    """Fails on every attempt."""
    raise TimeoutError("upstream API did not answer within 30 s")


@transform
def interrupt(context: Any, current: Any = None) -> Any:
    """What an operator's Ctrl-C does in the middle of a step."""
    raise KeyboardInterrupt("operator pressed Ctrl-C while publishing")


@transform
def hang(context: Any, marker: str, current: Any = None) -> Any:
    """A step that never finishes: says it has started, then waits to be killed."""
    import time

    Path(marker).write_text("started\n")
    time.sleep(120)
    return current


@transform
def busy_background_then_hang(context: Any, marker: str, current: Any = None) -> Any:
    """Leaves a daemon thread inside pyarrow's C++ code (reading a CSV stream that never
    ends), as Odibi's own background catalog updates can be when the run ends; says it has
    started, then waits for Ctrl-C."""
    import threading
    import time

    import pyarrow.csv as pcsv

    class EndlessCsv:
        closed = False

        def read(self, size: int = -1) -> bytes:
            time.sleep(0.01)
            return b"a,b\n1,2\n" * 10

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def writable(self) -> bool:
            return False

        def close(self) -> None:
            pass

        def tell(self) -> int:
            return 0

    def read_forever() -> None:
        pcsv.read_csv(EndlessCsv())

    threading.Thread(target=read_forever, name="background-read", daemon=True).start()
    Path(marker).write_text("started\n")
    time.sleep(120)
    return current
