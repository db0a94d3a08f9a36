"""Integrations with pipeline frameworks.

* :mod:`odibi_observe.integrations.odibi` — record every node run of an
  `Odibi <https://pypi.org/project/odibi/>`_ project (``pip install 'odibi-observe[odibi]'``);
  ``odibi-observe run odibi.yaml`` runs Odibi's own runner with it switched on.

Nothing here is imported by ``import odibi_observe``: a framework is only imported when its
integration is used.
"""
