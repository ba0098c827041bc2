"""Checkout-side and stream benchmarks (docs/quality.md "Performance").

Run them with ``python -m loadtest [names] [--json out.json]``; see ``loadtest/README.md``.
Benchmarks are never timed tests: they print one JSON document, keep it under
``loadtest/results/`` with a PNG plot, and report every figure next to the machine's own limits
(E1 / E16) measured in the same run.
"""
