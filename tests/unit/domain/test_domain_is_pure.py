"""engine.domain is the pure core: importing it must pull in no I/O library."""

import subprocess
import sys

FORBIDDEN = ("redis", "confluent_kafka", "bytewax", "prometheus_client", "fastapi", "httpx")


def test_domain_imports_no_io_library():
    code = (
        "import importlib, pkgutil, sys, engine.domain as d\n"
        "for m in pkgutil.walk_packages(d.__path__, 'engine.domain.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine.domain imported {out.stdout.strip()}"
