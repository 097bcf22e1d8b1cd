"""The garbage collector of a serving process: what it walks, how often, and its pauses.

CPython frees almost every object a request allocates by reference counting; the
cyclic collector only finds cycles, and while it runs the event loop runs nothing.
:func:`prepare_collector`, called once before a process serves:

- moves everything alive after start-up (modules, contracts, compiled rules, pools)
  out of the collector's sight (``gc.freeze``): left in the generations, every full
  collection walked them again (104 ms pauses in the fraud service at 500
  screenings/s);
- collects the young generation after ``gen0_threshold`` net allocations of container
  objects instead of CPython's 700. A request keeps a few hundred containers alive
  while it is in flight, so at 700 the fraud service at 500 screenings/s ran about
  50 young collections a second, and every tenth of them a middle one, each walking
  what the requests in flight held (docs/benchmarks.md, "Sixth session"). The older
  generations keep CPython's thresholds, so cyclic garbage is still found, a little
  later;
- exports every collection's pause as ``lastro_gc_pause_seconds`` (by generation), so
  a latency tail can be set against the collector's pauses on a dashboard.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

from prometheus_client import Histogram

from lastro.core.observability import metrics_registry

PAUSES: Final = Histogram(
    "lastro_gc_pause_seconds",
    "Pauses of the cyclic garbage collector (the process runs nothing else meanwhile), "
    "by generation collected.",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
    registry=metrics_registry(),
)


class _PauseClock:
    """A ``gc.callbacks`` entry observing each collection's duration in :data:`PAUSES`."""

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - self._started)


_PAUSE_CLOCK: Final = _PauseClock()


def measure_pauses() -> None:
    """Observe every collection's pause in :data:`PAUSES` from now on (idempotent);
    each generation's series exists from the start, at zero."""
    for generation in range(len(gc.get_threshold())):
        PAUSES.labels(str(generation))
    if _PAUSE_CLOCK not in gc.callbacks:
        gc.callbacks.append(_PAUSE_CLOCK)


def prepare_collector(gen0_threshold: int) -> None:
    """Freeze the start-up heap, set the young generation's threshold and measure
    pauses (module docstring); call once, when start-up is done. Serving processes
    take the threshold from ``LASTRO_GC_GEN0_THRESHOLD`` (default 10,000)."""
    if gen0_threshold < 1:
        raise ValueError("gen0_threshold must be at least 1")
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(gen0_threshold, middle, old)
    measure_pauses()
