#!/usr/bin/env python
"""Wait until a running Ray cluster has the nodes and GPUs a sweep should be planned for.

`mmtune sweep --address ...` sizes trials and concurrency from the nodes that are alive when it
starts: GPU workers that join later get no trials, and with no GPU node up yet `--gpus-per-trial
auto` plans CPU trials (and a number of GPUs per trial is refused). Run this first:

    python cluster/wait_for_cluster.py --address auto --gpus 4 --timeout 1200 && mmtune sweep ...

--request asks the autoscaler for that many one-GPU bundles first, for clusters that scale up from
zero GPU workers (cluster/aws-gpu.yaml). That request stands until it is replaced: withdraw it
with --release once the sweep is over (or take the cluster down), or the GPU nodes stay up.
Exit codes: 0 ready, 1 timed out, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wait_for_cluster.py", description=__doc__.splitlines()[0])
    p.add_argument("--address", default="auto", help="Ray cluster ('auto' on a cluster node, or host:port)")
    p.add_argument("--nodes", type=int, default=1, help="alive nodes to wait for, the head included")
    p.add_argument("--gpus", type=float, default=0, help="GPUs to wait for, summed over alive nodes")
    p.add_argument("--timeout", type=float, default=900, help="seconds before giving up (exit 1)")
    p.add_argument("--interval", type=float, default=5, help="seconds between checks")
    p.add_argument("--request", action="store_true",
                   help="first ask the autoscaler for --gpus one-GPU bundles (a standing request; see --release)")
    p.add_argument("--release", action="store_true", help="withdraw a standing --request, then exit")
    return p


def shortfall(nodes: list[dict[str, Any]], want_nodes: int, want_gpus: float) -> str | None:
    """What the cluster still lacks (None when nothing): NODES as `ray.nodes()` returns them."""
    alive = [n for n in nodes if n.get("Alive")]
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
    missing = []
    if len(alive) < want_nodes:
        missing.append(f"{len(alive)}/{want_nodes} nodes")
    if gpus < want_gpus:
        missing.append(f"{gpus:g}/{want_gpus:g} GPUs")
    return ", ".join(missing) or None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    from ray.autoscaler.sdk import request_resources

    owned = not ray.is_initialized()
    if owned:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    try:
        if args.release:
            request_resources(bundles=[])
            print("wait_for_cluster: standing resource request withdrawn")
            return 0
        if args.request and args.gpus > 0:
            request_resources(bundles=[{"GPU": 1}] * math.ceil(args.gpus))
            print(f"wait_for_cluster: asked the autoscaler for {math.ceil(args.gpus)} GPU(s)", flush=True)
        deadline = time.monotonic() + args.timeout
        while missing := shortfall(ray.nodes(), args.nodes, args.gpus):
            if time.monotonic() >= deadline:
                print(f"wait_for_cluster: timed out after {args.timeout:g} s; the cluster has {missing}",
                      file=sys.stderr)
                return 1
            print(f"wait_for_cluster: waiting ({missing})", flush=True)
            time.sleep(args.interval)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
        print(f"wait_for_cluster: ready: {len(alive)} node(s), {gpus:g} GPU(s)", flush=True)
        return 0
    finally:
        if owned:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
