"""The engine's self-reporting beyond the counters its hot paths keep (``engine.metrics``).

* ``flow`` — ``observe_flow``: what the flow process sets up around a run (watch list, drift,
  and the ``FlowReporter`` thread: dependency probes and the watched SKUs' ATP);
* ``api`` — ``ApiObserver`` and the checkout hooks: dependency probes, watched ATP, expiry lag
  and hold ages of an API process;
* ``holds`` — ``HoldClock``: when this process granted each hold, to observe how old it was at
  its end;
* ``probes`` — the Redis and broker probes of a process without an event loop.
"""
