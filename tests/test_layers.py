"""The package keeps its layers: the import-linter contracts in ``pyproject.toml`` hold.

``lint-imports`` runs as a real subprocess on the checkout under test, and again on a copy of
the package with one import planted per contract, to show that each contract can break (an
always-green linter would prove nothing). The map the contracts encode, and why each layer is
where it is, is ``docs/architecture.md`` ("Layers").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "odibi_observe"

pytestmark = pytest.mark.slow

# What ``lint-imports`` is, run from the interpreter running the tests.
_LINT = (
    "from importlinter.cli import lint_imports_command; "
    "lint_imports_command(prog_name='lint-imports')"
)


def _lint(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``project`` (its ``pyproject.toml``, its copy of the package)."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--no-cache", "--config", "pyproject.toml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _contracts() -> list[dict[str, object]]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        contracts: list[dict[str, object]] = tomllib.load(file)["tool"]["importlinter"]["contracts"]
    return contracts


def _contract(contract_id: str) -> dict[str, object]:
    return next(c for c in _contracts() if c["id"] == contract_id)


def test_every_contract_is_kept() -> None:
    result = _lint(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in output, output[-6000:]


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in the map: modules outside every layer go unchecked."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    layers = _contract("layers")["layers"]
    assert isinstance(layers, list)
    named = set(re.findall(rf"{PACKAGE}[\w.]*", " ".join(layers)))
    unplaced = sorted(
        module
        for module in graph.modules
        if not any(module == name or module.startswith(name + ".") for name in named)
    )
    # The package itself contains every layer, and ``sinks/__init__.py`` is empty.
    assert unplaced == [PACKAGE, f"{PACKAGE}.sinks"]


def test_no_contract_has_an_exception() -> None:
    """Every import keeps the layers: no contract carries an ``ignore_imports`` list."""
    for contract in _contracts():
        assert "ignore_imports" not in contract, contract["id"]


# (contract broken, file changed, the import planted into it, the chain reported)
PLANTS = [
    pytest.param(
        "The CLI on top, the conventions at the bottom, nothing climbs",
        "conventions.py",
        "def _climb() -> None:\n    import odibi_observe.cli\n",
        "odibi_observe.conventions -> odibi_observe.cli",
        id="layers-local-import",
    ),
    pytest.param(
        "The CLI on top, the conventions at the bottom, nothing climbs",
        "sinks/base.py",
        "from odibi_observe import _runtime\n",
        "odibi_observe.sinks.base -> odibi_observe._runtime",
        id="layers",
    ),
    pytest.param(
        "A feature's command module is on top of its package",
        "sidecar/service.py",
        "from odibi_observe.sidecar import commands\n",
        "odibi_observe.sidecar.service -> odibi_observe.sidecar.commands",
        id="commands",
    ),
    pytest.param(
        "The feature packages do not know each other",
        "health/model.py",
        "from odibi_observe.sidecar import options\n",
        "odibi_observe.health.model -> odibi_observe.sidecar",
        id="features",
    ),
    pytest.param(
        "The sidecar writes the span ledger, reconciliation reads it",
        "sidecar/ledger.py",
        "from odibi_observe.reconcile import model\n",
        "odibi_observe.sidecar.ledger -> odibi_observe.reconcile.model",
        id="sidecar-reconcile",
    ),
    pytest.param(
        "Contract modules import no implementation",
        "reconcile/sources.py",
        "from odibi_observe.reconcile import tempo\n",
        "odibi_observe.reconcile.sources -> odibi_observe.reconcile.tempo",
        id="contracts",
    ),
    # The import the engine had before it took the contract from reconcile.sources.
    pytest.param(
        "Reconciliation's engine and reports know the sources through their contract",
        "reconcile/engine.py",
        "from odibi_observe.reconcile.catalog_sources import CatalogSource\n",
        "odibi_observe.reconcile.engine -> odibi_observe.reconcile.catalog_sources",
        id="engine",
    ),
    pytest.param(
        "Inside spool/: one module per concept, no cycle",
        "spool/frames.py",
        "def _climb() -> None:\n    from odibi_observe.spool import writer\n",
        "odibi_observe.spool.frames -> odibi_observe.spool.writer",
        id="spool",
    ),
    pytest.param(
        "Inside sinks/otel/: the sink on its three parts",
        "sinks/otel/spans.py",
        "from odibi_observe.sinks.otel import sink\n",
        "odibi_observe.sinks.otel.spans -> odibi_observe.sinks.otel.sink",
        id="otel",
    ),
    pytest.param(
        "Inside catalog/: the store on its engine",
        "catalog/schema.py",
        "from odibi_observe.catalog import store\n",
        "odibi_observe.catalog.schema -> odibi_observe.catalog.store",
        id="catalog",
    ),
    # The receiver took its constants from the package face, which names the service.
    pytest.param(
        "Inside sidecar/: the service on its server",
        "sidecar/receiver.py",
        "from odibi_observe.sidecar import TRACES_PATH as _T\n",
        "odibi_observe.sidecar.receiver -> odibi_observe.sidecar (l.",
        id="sidecar",
    ),
]


@pytest.mark.parametrize(("contract", "target", "planted", "chain"), PLANTS)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, contract: str, target: str, planted: str, chain: str
) -> None:
    shutil.copytree(
        ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / PACKAGE / target).open("a", encoding="utf-8") as file:
        file.write("\n\n" + planted)

    result = _lint(tmp_path)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output[-6000:]
    broken = [line for line in output.splitlines() if line.endswith(" BROKEN")]
    assert any(line.startswith(contract) for line in broken), output[-6000:]
    assert chain in output, output[-6000:]
