"""The engine's self-reporting beyond the counters its hot paths keep (``engine.metrics``).

* ``flow`` — ``observe_flow``: what the flow process sets up around a run (watch list, drift,
  dependency probes);
* ``api`` — ``ApiObserver`` and the checkout hooks: dependency probes, watched ATP, expiry lag
  and hold ages of an API process;
* ``holds`` — ``HoldClock``: when this process granted each hold, to observe how old it was at
  its end;
* ``probes`` — ``DependencyProbe``: Redis and broker probes in a thread.
"""
