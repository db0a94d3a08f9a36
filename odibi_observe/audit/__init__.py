"""``odibi-observe audit``: an Odibi project's incremental nodes audited from Odibi's own
records (Delta history, ``meta_state``, ``meta_runs``), with no catalog of ours needed.

:func:`~odibi_observe.audit.detect.audit` runs it on a
:func:`~odibi_observe.audit.project.load_project`; docs/audit.md explains the findings.
"""
