"""Resources per node run: a real node allocating a known amount of memory, through the catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from odibi_observe import _resources
from odibi_observe._resources import read_limit
from odibi_observe.catalog.schema import CPU_SECONDS, MEMORY_LIMIT, PEAK_RSS

MIB = 1024 * 1024

NODE = """
import odibi_observe as oo
oo.configure(catalog_url={url!r}, strict=True)

kept = []

@oo.observe_node(pipeline="mem", node="big")
def big():
    # Held past the return: the final reading at the end of the run sees it.
    block = bytearray(200 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    kept.append(block)
    return len(block)

big()
oo.shutdown(timeout=10)
"""


def test_peak_rss_of_a_node_holding_200_mib_reaches_the_catalog(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    subprocess.run([sys.executable, "-c", NODE.format(url=url)], check=True, timeout=120)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT {PEAK_RSS}, {CPU_SECONDS}, {MEMORY_LIMIT} FROM meta_runs")
        ).one()
    engine.dispose()
    assert row[0] >= 200 * MIB
    assert row[1] is not None and row[1] >= 0


def test_memory_limit_is_read_from_a_cgroup_directory(tmp_path: Path) -> None:
    """Faked cgroup files in a temp dir: this host's /sys/fs/cgroup is not ours to write."""
    (tmp_path / "memory.max").write_text("268435456\n")
    assert read_limit(tmp_path) == 268435456
    (tmp_path / "memory.max").write_text("max\n")
    assert read_limit(tmp_path) is None


def test_a_run_shorter_than_the_final_reading_threshold_takes_the_latest_reading() -> None:
    """A millisecond node takes no ``pread`` of its own (it would give the interpreter lock to
    the sinks' threads): it records the process's latest reading; a longer one reads afresh."""
    latest = _resources._latest[0] = 12_345 * 4096  # a reading no real process would match
    short = _resources.ResourceMeter()
    assert _resources.final_fields(short, 1_000)["peak_rss_bytes"] == latest
    long = _resources.ResourceMeter()
    fresh = _resources.final_fields(long, _resources.FINAL_READING_MIN_NS)["peak_rss_bytes"]
    assert fresh is not None and fresh != latest
    assert _resources._latest[0] == fresh  # the fresh reading is now the latest
