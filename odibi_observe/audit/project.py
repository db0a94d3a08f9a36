"""Reading an Odibi project: which nodes keep a high-water mark, and where their files are.

The YAML is read with Odibi's own loader (``odibi.config.load_config_from_file``: environment
variables, imports, recipes, ``--env`` overrides, validation), which reads and changes
nothing else — ``PipelineManager.from_yaml`` would bootstrap the system catalog. Paths are
resolved as Odibi 3.15 resolves them (``odibi.state.create_state_backend``, the local
connection): a relative ``base_path`` is relative to the directory Odibi runs in, which for
``odibi run`` is the project's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odibi_observe.audit.model import AuditInputError, Writer


@dataclass
class Project:
    """What the audit needs of one Odibi project."""

    path: Path
    name: str
    writers: list[Writer] = field(default_factory=list)
    #: Odibi's Delta ``meta_runs`` and ``meta_state`` (None: the system catalog is not on a
    #: local path).
    meta_runs: str | None = None
    meta_state: str | None = None
    #: The Delta target on a local path of every node that writes one, stateful or not, by
    #: ``(pipeline, node)``: another node's runs claim the commits it makes to a shared target.
    targets: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_project(path: str | os.PathLike[str], env: str | None = None) -> Project:
    """The project at ``path`` (its YAML); :class:`AuditInputError` when it cannot be read."""
    yaml_path = Path(path)
    if not yaml_path.exists():
        raise AuditInputError(f"project {str(yaml_path)!r}: no such file")
    if yaml_path.is_dir():
        candidates = [
            yaml_path / n for n in ("odibi.yaml", "odibi.yml") if (yaml_path / n).exists()
        ]
        if not candidates:
            raise AuditInputError(
                f"project {str(yaml_path)!r} is a directory without odibi.yaml: give the "
                "project's YAML file"
            )
        yaml_path = candidates[0]
    config = _load_config(yaml_path, env)
    root = yaml_path.resolve().parent
    project = Project(path=yaml_path, name=str(getattr(config, "project", "") or ""))
    _system_paths(project, config, root)
    for pipeline in config.pipelines or []:
        for node in pipeline.nodes or []:
            target = _target(config, root, getattr(node, "write", None))
            if target is not None:
                project.targets[(str(pipeline.pipeline), str(node.name))] = target
            writer = _writer(project, str(pipeline.pipeline), node, target)
            if writer is not None:
                project.writers.append(writer)
    return project


def _load_config(yaml_path: Path, env: str | None) -> Any:
    try:
        from odibi.config import load_config_from_file
    except ImportError:
        raise AuditInputError(
            "the audit reads the project with Odibi's own loader, and odibi is not installed: "
            "pip install 'odibi-observe[odibi]'"
        ) from None
    try:
        return load_config_from_file(str(yaml_path), env=env)
    except Exception as exc:  # Odibi's loader raises ValueError, yaml errors, KeyError, ...
        text = str(exc).strip() or type(exc).__name__
        raise AuditInputError(f"project {str(yaml_path)!r} cannot be read: {text}") from None


def _value(obj: Any, name: str) -> Any:
    """An attribute of an Odibi config object, an enum as its value."""
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return getattr(value, "value", value)


def _local_base(config: Any, connection: str, root: Path) -> Path | None:
    """The directory of a ``local`` connection; None for any other kind (or a URI)."""
    conn = (config.connections or {}).get(connection)
    if conn is None or _value(conn, "type") != "local":
        return None
    base = str(_value(conn, "base_path") or "./data")
    if "://" in base:
        return None
    return Path(base) if os.path.isabs(base) else root / base


def _system_paths(project: Project, config: Any, root: Path) -> None:
    """Where Odibi keeps ``meta_runs`` and the HWM state (``create_state_backend``; Odibi 3.15
    requires the ``system:`` section)."""
    system = config.system
    base = _local_base(config, str(_value(system, "connection")), root)
    if base is None:
        project.notes.append(
            f"the system catalog is on connection {_value(system, 'connection')!r}, which is "
            "not a local path: meta_runs and meta_state are not read"
        )
        return
    system_dir = base / str(_value(system, "path") or "_odibi_system")
    project.meta_runs = str(system_dir / "meta_runs")
    project.meta_state = str(system_dir / "meta_state")


def _target(config: Any, root: Path, write: Any) -> str | None:
    """The Delta table a node's ``write`` names on a local path; None for anything else."""
    if write is None or str(_value(write, "format")) != "delta":
        return None
    base = _local_base(config, str(_value(write, "connection")), root)
    path = _value(write, "path")
    return str(base / str(path)) if base is not None and path else None


def _writer(project: Project, pipeline: str, node: Any, target: str | None) -> Writer | None:
    """The node as a :class:`Writer` when it reads incrementally with a stateful HWM and writes
    a Delta table on a local path; a note when it keeps an HWM the audit cannot follow."""
    read, write = getattr(node, "read", None), getattr(node, "write", None)
    incremental = getattr(read, "incremental", None) if read is not None else None
    if incremental is None or _value(incremental, "mode") != "stateful":
        return None
    name = str(node.name)
    where = f"{pipeline}/{name}"
    if write is None:
        project.notes.append(f"{where} keeps an HWM but writes nothing: not audited")
        return None
    if target is None:
        project.notes.append(
            f"{where} writes {_value(write, 'format')} (connection "
            f"{_value(write, 'connection')!r}, table {_value(write, 'table')!r}, path "
            f"{_value(write, 'path')!r}): only Delta tables on local paths have a history "
            "the audit can read"
        )
        return None
    return Writer(
        pipeline=pipeline,
        node=name,
        target=target,
        state_key=str(_value(incremental, "state_key") or f"{name}_hwm"),
        column=str(_value(incremental, "column") or ""),
        mode=str(_value(write, "mode") or ""),
    )
