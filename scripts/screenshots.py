"""Regenerate the pictures in docs/images from the sample catalog, in headless Chromium.

    python scripts/screenshots.py        # needs chromium (apt-get install -y chromium)

Writes status-page-1400.png, status-page-800.png (``odibi-observe report``) and
reconcile-report.png (``odibi-observe reconcile``'s report.html) into docs/images/. Each page
is first measured (a copy with a one-line script reports the page height in the DOM; the
pages themselves have none), so every picture shows the whole page and nothing below it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import sample_catalog  # noqa: E402

from odibi_observe.cli import main  # noqa: E402

PROBE = (
    '<script>addEventListener("load",()=>{document.body.dataset.h='
    "document.documentElement.scrollHeight})</script>"
)


def chromium(*args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    done = subprocess.run(  # noqa: S603 - our own arguments
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout


def shoot(page: Path, width: int, target: Path) -> None:
    probe = page.with_name("probe.html")
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    found = re.search(
        r'data-h="(\d+)"', chromium(f"--window-size={width},1000", "--dump-dom", probe.as_uri())
    )
    height = int(found.group(1)) if found else 2400
    chromium(f"--window-size={width},{height}", f"--screenshot={target}", page.as_uri())
    probe.unlink()
    print(f"wrote {target.relative_to(ROOT)} ({width}x{height})")


def run() -> int:
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = sample_catalog.build(work / "sample")
        main(["report", "--catalog", str(catalog), "--out", str(work / "status"), "--quiet"])
        status = work / "status" / "status.html"
        shoot(status, 1400, images / "status-page-1400.png")
        shoot(status, 800, images / "status-page-800.png")
        shoot(work / "sample" / "reconcile" / "report.html", 1400, images / "reconcile-report.png")
    return 0


if __name__ == "__main__":
    sys.exit(run())
