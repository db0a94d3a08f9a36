"""The status page: the overview dashboard's panels as one self-contained HTML file.

``odibi-observe report`` reads the run catalog alone (read-only) into a
:class:`~odibi_observe.statuspage.model.StatusPage` with
:func:`~odibi_observe.statuspage.model.collect`, and draws it with
:func:`~odibi_observe.statuspage.html.render_html`: the embedded default for pictures, as
SQLite is for the catalog, for teams that run no Grafana.
"""

from odibi_observe.statuspage.html import render_html
from odibi_observe.statuspage.model import StatusPage, StatusPageError, collect

__all__ = ["StatusPage", "StatusPageError", "collect", "render_html"]
