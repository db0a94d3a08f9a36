"""Odibi plugin: ``ODIBI_OBSERVE_INSTRUMENT=1 odibi run odibi.yaml`` records every node run.

Odibi's one plugin mechanism is the ``odibi.connections`` entry-point group: every
``PipelineManager.from_yaml`` (so every ``odibi run``) loads its entry points before any
pipeline runs. odibi-observe declares this module there::

    [project.entry-points."odibi.connections"]
    odibi_observe = "odibi_observe.integrations.odibi_plugin:connection_factory"

Loading it instruments Odibi when ``ODIBI_OBSERVE_INSTRUMENT`` is true and does nothing
otherwise, so installing odibi-observe never changes an Odibi run by itself. The records go
where the ``ODIBI_OBSERVE_*`` / ``OTEL_*`` environment says (``ODIBI_OBSERVE_CATALOG_URL``,
``ODIBI_OBSERVE_TRACES_FILE``, ...); ``odibi run`` changes into the project directory, so a
relative path there is relative to the project.

Odibi registers the entry point's object as a connection type named ``odibi_observe``; it is
not one, and a connection declared with that type gets an error saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from odibi_observe.config import ConfigurationError
from odibi_observe.integrations.odibi import ENV_INSTRUMENT, instrument_from_environment


def connection_factory(name: str, config: Mapping[str, Any]) -> NoReturn:
    """What Odibi calls for a connection of type ``odibi_observe``: there is no such thing."""
    raise ConfigurationError(
        f"connection {name!r}: 'odibi_observe' is not a connection type; it is the Odibi "
        f"plugin of odibi-observe, which records node runs when {ENV_INSTRUMENT}=1 is set"
    )


instrument_from_environment()
