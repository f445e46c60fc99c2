"""Settings of the processes that run mmtune's own work (the command line, trial workers), set when that work
starts, never at import."""
from __future__ import annotations

import gc

# Importing torch, Ray and scikit-learn makes ~300,000 long-lived objects; at Python's default first threshold (700
# allocations) the collector runs hundreds of times over that growing heap while they load. Measured with
# gc.callbacks, 3 runs each: a 1-epoch `mmtune train` spent 0.23-0.26 CPU-s collecting instead of 0.74-0.86 (66
# collections, not 956); a trial worker's imports after torch (scikit-learn's metrics, torch._dynamo, the loop)
# 0.25-0.27 instead of 0.61-0.66.
GC_FIRST_THRESHOLD = 10_000


def collect_less() -> None:
    """Raise the collector's first threshold to GC_FIRST_THRESHOLD; the other thresholds stay as they are."""
    gc.set_threshold(GC_FIRST_THRESHOLD, *gc.get_threshold()[1:])


def leave(code: int) -> None:
    """Exit with CODE, the heap frozen first: leaving, the interpreter collects it several times (~2 s of CPU per
    command, measured). Frozen objects are skipped; refcounted cleanup and atexit handlers (Ray's shutdown among
    them) still run."""
    gc.freeze()
    raise SystemExit(code)
