"""Commands of this package (placeholder until the package's commands exist)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's commands to the odibi-observe parser."""
