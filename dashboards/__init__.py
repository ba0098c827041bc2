"""Grafana dashboards and Prometheus alerting rules as code.

``python -m dashboards.build`` writes ``dashboards/generated/*.json`` and ``dashboards/rules.yml``
from the definitions in ``flash_sale.py``, ``stream_health.py``, ``supply.py`` and ``rules.py``;
a test regenerates them and fails when the committed files are stale.
"""
