"""How busy finalize kept its trial slots: each run's start and end from its result.json, the span from the first
start to the last end, and the runs' summed time over (slots x span). Reads finished experiments; trains nothing.

    .venv/bin/python bench/finalize_slots.py results/<exp>/final [...] [--slots 2] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmtune.tune.experiment import result_lines  # noqa: E402


def slots(final: Path, n_slots: int) -> dict[str, Any]:
    """Span, summed run time and slot occupancy of the finalize run in FINAL (its trial folders)."""
    runs = []
    for trial in sorted(final.glob("trial_*")):
        if lines := result_lines(trial / "result.json"):
            end, took = lines[-1]["timestamp"], lines[-1]["time_total_s"]
            runs.append({"trial": trial.name, "start": end - took, "end": end, "run_s": took})
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    busy = sum(r["run_s"] for r in runs)
    return {"final": str(final), "runs": len(runs), "slots": n_slots, "span_s": round(span, 1),
            "run_s_sum": round(busy, 1), "slots_busy": round(busy / (n_slots * span), 3),
            "span_at_full_occupancy_s": round(busy / n_slots, 1)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Print (and with --out, write) one line per finalize folder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("final", nargs="+", type=Path, help="<experiment>/final folders")
    ap.add_argument("--slots", type=int, default=2, help="concurrent trials finalize ran (default 2)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    out = [slots(f, args.slots) for f in args.final]
    for r in out:
        print(f"{r['final']}: {r['runs']} runs, span {r['span_s']:.0f} s, runs {r['run_s_sum']:.0f} s, "
              f"slots busy {r['slots_busy']:.0%}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
