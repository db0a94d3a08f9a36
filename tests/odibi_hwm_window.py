"""Run an Odibi project with its HWM commit held at the window after the write.

``python tests/odibi_hwm_window.py MODE MARKER [odibi run arguments]`` in the project's
directory runs ``odibi run odibi.yaml`` through the Odibi integration (configured from the
``ODIBI_OBSERVE_*`` environment), with ``StateManager.set_hwm`` replaced *under* the
integration's wrapper, so the wrapper sees what Odibi's own call would do:

``block``
    write MARKER (holding this process's pid) and wait for ever: the Delta write has
    committed, the HWM is not saved. The test SIGKILLs the process there — the deterministic
    form of a crash in that window.
``fail``
    raise ``OSError`` (the state backend unreachable): Odibi marks the result
    ``data_write_committed`` / ``hwm_error`` and the node fails.
``hold``
    write MARKER and wait until ``MARKER.release`` exists, then Odibi's own ``set_hwm``: the
    run stays between its write and its HWM while another run of the node goes by.
``pass``
    Odibi's own ``set_hwm``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def hold_set_hwm(mode: str, marker: Path) -> None:
    from odibi.state import StateManager

    original = StateManager.set_hwm

    def set_hwm(self: Any, key: str, value: Any) -> None:
        if mode == "block":
            marker.write_text(str(os.getpid()))
            while True:
                time.sleep(60)
        if mode == "fail":
            raise OSError("state backend unreachable: meta_state is locked")
        if mode == "hold":
            marker.write_text(str(os.getpid()))
            release = marker.with_name(marker.name + ".release")
            while not release.exists():
                time.sleep(0.05)
        original(self, key, value)

    StateManager.set_hwm = set_hwm


def main(argv: list[str]) -> int:
    mode, marker, *odibi_args = argv
    hold_set_hwm(mode, Path(marker))
    from odibi_observe.integrations.odibi import run_odibi_cli

    return run_odibi_cli(["run", "odibi.yaml", *odibi_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
