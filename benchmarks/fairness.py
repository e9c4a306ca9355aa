"""Identification error + fairness metrics at scale, time and peak memory.

1. facenas's chunked ranks on 50,000 embeddings of dimension 512 from 5,000 identities
   (target: under 60 s and 2 GiB peak on a 2-core CPU);
2. at N = 10,000: facenas against the FR-NAS-style reference (full N x N distance matrix,
   argsort of every row, ranks read off the sorted rows), checking that both agree.

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; the table shows the peak and the increase over the process after loading its inputs.

    python benchmarks/fairness.py [--n 50000] [--identities 5000] [--dim 512] [--baseline-n 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_embeddings(n: int, identities: int, dim: int, seed: int = 0):
    """Identity centres plus per-image noise; one group's identities are noisier (less accurate)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % identities
    ids = ids[torch.randperm(n, generator=g)]
    centres = torch.randn(identities, dim, generator=g)
    group = ids % 2
    noise = torch.where(group == 0, 2.5, 2.2)[:, None]
    emb = centres[ids] + noise * torch.randn(n, dim, generator=g)
    return emb, ids, group


def full_matrix_ranks(emb: torch.Tensor, ids: torch.Tensor):
    """FR-NAS style: the whole distance matrix, every row sorted, ranks read from the order."""
    e = torch.nn.functional.normalize(emb.double(), dim=1).numpy()
    y = ids.numpy()
    dist = np.sqrt(np.maximum(2 - 2 * e @ e.T, 0))
    np.fill_diagonal(dist, np.inf)  # the probe itself goes last
    order = np.argsort(dist, axis=1, kind="stable")
    same = y[order] == y[:, None]
    probes = same.any(axis=1)
    first = np.argmax(same, axis=1)  # images of other identities sorted before the nearest same one
    ranks_id = np.array([len(np.unique(y[order[i, : first[i]]])) for i in np.flatnonzero(probes)])
    return np.flatnonzero(probes), first[probes], ranks_id


def _child(kind: str, n: int, identities: int, dim: int) -> None:
    from facenas.callbacks.fairness import fairness_metrics, identification_ranks

    emb, ids, group = make_embeddings(n, identities, dim)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "facenas":
        ranks = identification_ranks(emb, ids)
        result = fairness_metrics(ranks, group, ["a", "b"], "a")
        elapsed = time.perf_counter() - start
        out = {
            "rank": ranks.rank.tolist(),
            "rank_id": ranks.rank_by_identity.tolist(),
            "error": result.error,
            "rank_disparity": result.rank_disparity,
        }
    else:
        _, rank, rank_id = full_matrix_ranks(emb, ids)
        elapsed = time.perf_counter() - start
        out = {
            "rank": rank.tolist(),
            "rank_id": rank_id.tolist(),
            "error": float((rank > 0).mean()),
            "rank_disparity": None,
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024, **out}))


def measure(kind: str, n: int, identities: int, dim: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--identities", str(identities), "--dim", str(dim)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--identities", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--baseline-n", type=int, default=10_000)
    parser.add_argument("--child", choices=["facenas", "full"], default=None)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n, args.identities, args.dim)
        return
    print(f"torch threads: {torch.get_num_threads()}")
    rows = []
    big = measure("facenas", args.n, args.identities, args.dim)
    rows.append(("facenas chunked", args.n, big))
    small_ids = max(2, args.identities * args.baseline_n // args.n)
    ours = measure("facenas", args.baseline_n, small_ids, args.dim)
    ref = measure("full", args.baseline_n, small_ids, args.dim)
    assert ours["rank"] == ref["rank"] and ours["rank_id"] == ref["rank_id"], (
        "facenas and the full-matrix reference disagree"
    )
    rows += [("facenas chunked", args.baseline_n, ours), ("full matrix + argsort (FR-NAS style)", args.baseline_n, ref)]
    print()
    print("| implementation | N | identities | error | time (s) | peak RSS (MiB) | increase (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, n, r in rows:
        ids = args.identities if n == args.n else small_ids
        print(
            f"| {name} | {n:,} | {ids:,} | {r['error']:.4f} | {r['seconds']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['delta_mib']:.0f} |"
        )
    print(
        f"\nat N={args.baseline_n:,}: facenas is {ref['seconds'] / ours['seconds']:.1f}x faster and uses "
        f"a {ref['delta_mib'] / max(ours['delta_mib'], 1):.1f}x smaller memory increase; ranks identical"
    )
    print(f"at N={args.n:,}: rank_disparity {big['rank_disparity']:.3f}, error {big['error']:.4f}")


if __name__ == "__main__":
    main()
