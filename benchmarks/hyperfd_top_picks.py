"""Where a warmed-up HyperFD ranker's own picks land on each online dataset, before it has seen
any online result: the normalized rank (by validation AP, as in the evaluation) of its top-1 and
top-2 configurations, and the Spearman correlation of its scores with the dataset's validation
AP, next to the same for the source dataset's best configurations (best-on-source).

    python benchmarks/hyperfd_top_picks.py --table benchmarks/hyperfd/hyperfd_cpu.csv \
        --table_config configs/hyperfd/hyperfd_cpu.yaml

The ranker is the one ``facenas hyperfd evaluate`` warms up (same extractor, steps and seeds);
``--offline`` chooses its offline datasets (default: those named ``wider*``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facenas.hyperfd.methods import HyperFD
from facenas.hyperfd.online import normalized_rank, read_table, single_thread
from facenas.hyperfd.table.evaluation import attach_features
from facenas.search.spaces import config_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--table_config", "--benchmark", dest="table_config", required=True, help="the table's YAML")
    parser.add_argument("--offline", nargs="+", default=None)
    parser.add_argument("--source", default="wider", help="the dataset whose best configurations are best-on-source")
    parser.add_argument("--features", default="detector")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup_steps", type=int, default=1000, help="the ranker's warm-up steps")
    parser.add_argument("--cache", default="runs/hyperfd/features")
    args = parser.parse_args()

    table = read_table(args.table)
    space = next(iter(table.values())).space
    offline = args.offline or [n for n in table if n.startswith("wider")]
    online = [n for n in table if n not in offline]
    attach_features(table, args.table_config, list(table), {args.features}, args.cache)
    source = table[args.source].val
    by_source = sorted(source, key=lambda k: -source[k])

    rows: dict[str, list[tuple[float, float, float]]] = {n: [] for n in online}
    with single_thread():
        for seed in args.seeds:
            method = HyperFD(space=space, extractor=args.features, warmup_steps=args.warmup_steps, seed=seed)
            method.warmup([table[n] for n in offline], np.random.default_rng(seed))
            for name in online:
                data = table[name]
                pool = list(data.configs.values())
                scores = method.scores(method.client_meta(data.features[args.features]), pool)
                order = [config_key(pool[i]) for i in np.argsort(-scores, kind="stable")]
                val = [data.val[config_key(c)] for c in pool]
                rows[name].append(
                    (normalized_rank(data, order[0]), normalized_rank(data, order[1]), spearmanr(scores, val)[0])
                )
    print(f"offline: {', '.join(offline)}; seeds {args.seeds}; pool {len(source)}")
    print(
        "| dataset | ranker top-1 rank (%) | ranker top-2 rank (%) | Spearman(score, val AP) "
        "| source's top-1 rank (%) | source's top-2 rank (%) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        a = np.array(r)
        src = [normalized_rank(table[name], k) for k in by_source[:2]]
        print(
            f"| {name} | {a[:, 0].mean():.1f} | {a[:, 1].mean():.1f} | {a[:, 2].mean():+.2f} "
            f"| {src[0]:.1f} | {src[1]:.1f} |"
        )


if __name__ == "__main__":
    main()
