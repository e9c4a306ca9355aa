"""HyperFD's performance lookup table: (configuration, dataset, seed) -> validation and test
AP@50, built with the study machinery (supplementary B.4, B.5, D; ../shared/design/HYPERFD.md
sections 3.2 and 6).

A table YAML (``configs/hyperfd/``) names the datasets, the space and its candidate pool, the
training recipe, the seeds and the executor. The build runs one study per (dataset, seed) with
the ``list`` backend over the pool, each in its own store under
``runs/hyperfd/<name>/<dataset>/seed<seed>/``: the stores are the table, so
a build killed at any moment and run again finishes only what is missing (a study's own resume),
and a failed training is a recorded entry that never stops the build. Entry values follow
HyperFD's protocol: ``val/ap50`` is the best validation AP of the run (the checkpoint that is
kept) and ``test/ap50`` that checkpoint's AP on the test split (``facenas fit`` tests the best
checkpoint when it ends).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facenas.search.spaces import compact_config, config_key, finite_configurations, load_space, nas_config, pool
from facenas.search.store import StudyStore
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Result, Trial

# the table's two measurements: the best validation AP (the kept checkpoint's) and its test AP
OBJECTIVES = (
    Objective("val/ap50", "max", reduce="best"),
    Objective("test/ap50", "max"),
)
COLUMNS = (
    "dataset",
    "space",
    "configuration",
    "params",
    "seed",
    "val_ap50",
    "test_ap50",
    "train_seconds",
    "status",
    "error",
)


@dataclass
class Dataset:
    """A dataset of the table: a name and the ``data.init_args`` keys that make it (real files,
    a split file of a clustered sub-dataset, or synthetic domains)."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"dataset name {self.name!r} must be non-empty and without '/'")


# folders of runs/hyperfd that the hyperfd verbs use for other things than a table
RESERVED_NAMES = ("features", "evaluation", "rankers")


@dataclass
class TableConfig:
    """A lookup table, as written in ``configs/hyperfd/<name>.yaml``.

    Args:
        name: the table's name (its folder: ``runs/hyperfd/<name>``, or ``root``).
        datasets: ``[{name, data: {data.init_args keys}}]``.
        space: ``hyperfd_hpo``, ``hyperfd_nas``, ``hyperfd_joint`` or another space.
        pool: ``{all: true}`` (every configuration of a finite space), ``{n, seed}`` (a seeded
            subset of a finite space, or n distinct ``hyperfd_nas`` architectures), or
            ``{configs: [...]}``. The same pool on every dataset.
        mapping: space parameters -> training keys, as in a search YAML.
        base: the training YAML(s) every entry starts from.
        overrides: dotted training keys for every entry (the recipe: image size, epochs,
            ``model.init_args.weights`` to fine-tune the shipped detector, ``remap_from``).
        budget: epochs per entry (``trainer.max_epochs``).
        seeds: the training seeds of the whole pool.
        noise: ``{configs: k, seeds: [...]}``: the first k configurations of the pool trained
            again with these seeds, to measure seed noise.
        executor: ``inprocess``, ``subprocess`` or ``dask`` with its arguments, as in a search YAML.
        root: where the table lives.
    """

    name: str
    datasets: list[Dataset]
    space: str
    pool: dict[str, Any]
    mapping: dict[str, str]
    base: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    budget: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    noise: dict[str, Any] | None = None
    executor: Any = "inprocess"
    root: str | None = None

    def __post_init__(self) -> None:
        if self.root is None and self.name in RESERVED_NAMES:
            raise ValueError(f"table name {self.name!r} is taken by runs/hyperfd/{self.name}; choose another name")
        self.datasets = [d if isinstance(d, Dataset) else Dataset(**d) for d in self.datasets]
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique: {names}")
        if not self.datasets:
            raise ValueError("a table needs at least one dataset")
        if not self.seeds:
            raise ValueError("a table needs at least one seed")
        if self.noise is not None and (int(self.noise.get("configs", 0)) < 1 or not self.noise.get("seeds")):
            raise ValueError("noise takes configs (>= 1) and a list of seeds")

    @property
    def root_dir(self) -> Path:
        """Where the table lives: ``root``, else ``runs/hyperfd/<name>``, or the folder tables
        had before, ``runs/benchmark/<name>``, when only that one exists (a table built part-way
        there resumes there)."""
        if self.root:
            return Path(self.root)
        folder = Path(f"runs/hyperfd/{self.name}")
        if not folder.exists() and self.former_root_dir.is_dir():
            return self.former_root_dir
        return folder

    @property
    def former_root_dir(self) -> Path:
        """The default folder of a table before it moved to ``runs/hyperfd/<name>``."""
        return Path(f"runs/benchmark/{self.name}")

    def data_overrides(self, dataset: Dataset, seed: int) -> dict[str, Any]:
        """The dotted training overrides of one dataset's entries with ``seed``: the table's
        recipe, then the dataset's ``data.init_args`` keys, then the seed."""
        overrides = dict(self.overrides)
        overrides.update({f"data.init_args.{k}": v for k, v in dataset.data.items()})
        overrides["seed_everything"] = seed
        return overrides

    def configurations(self) -> list[dict[str, Any]]:
        """The pool: the same list for every dataset (a pure function of the settings)."""
        spec = dict(self.pool)
        if "configs" in spec:
            return [dict(c) for c in spec["configs"]]
        space = load_space(self.space, int(spec.get("seed", 0)))
        grid = finite_configurations(space)
        if grid is None:
            if self.space != "hyperfd_nas" or "n" not in spec:
                raise ValueError(f"space {self.space!r} is not finite: give pool {{n, seed}} (hyperfd_nas) or configs")
            return [nas_config(arch) for arch in pool(int(spec["n"]), int(spec.get("seed", 0)))]
        if spec.get("all"):
            return grid
        if "n" not in spec:
            raise ValueError("pool takes all: true, n (and seed), or configs")
        import numpy as np

        n = int(spec["n"])
        if n > len(grid):
            raise ValueError(f"pool n {n} exceeds the {len(grid)} configurations of space {self.space!r}")
        pick = np.random.default_rng(int(spec.get("seed", 0))).choice(len(grid), size=n, replace=False)
        return [grid[i] for i in sorted(pick)]

    def studies(self) -> Iterator[tuple[Dataset, int, list[dict[str, Any]], StudySettings]]:
        """Every study of the build: (dataset, seed, its configurations, settings), seed by seed
        (the pool's seeds first, then the noise seeds), every dataset within a seed, so that a
        build stopped part-way holds the whole pool on as many datasets as possible."""
        configs = self.configurations()
        runs: list[tuple[int, list[dict[str, Any]]]] = [(s, configs) for s in self.seeds]
        if self.noise is not None:
            k = int(self.noise["configs"])
            runs += [(int(s), configs[:k]) for s in self.noise["seeds"] if int(s) not in self.seeds]
        for seed, chosen in runs:
            for dataset in self.datasets:
                overrides = self.data_overrides(dataset, seed)
                folder = self.root_dir / dataset.name / f"seed{seed}"
                settings = StudySettings(
                    name=f"{self.name}/{dataset.name}/seed{seed}",
                    space=self.space,
                    objectives=list(OBJECTIVES),
                    base=list(self.base),
                    mapping=dict(self.mapping),
                    backend={"class_path": "list", "init_args": {"configs": chosen}},
                    executor=self.executor,
                    budget=self.budget,
                    n_trials=len(chosen),
                    seed=seed,
                    runs_dir=str(folder),
                    overrides=overrides,
                    report=False,
                )
                yield dataset, seed, chosen, settings


def dataset_module(table_config: str | Path, dataset: str) -> Any:
    """The data module of one dataset of a table YAML, built as its entries' ``facenas fit``
    builds it (:func:`facenas.training.build_datamodule` over the base YAMLs and the overrides
    of the dataset's first seed)."""
    import yaml

    from facenas.training.config import build_datamodule

    path = Path(table_config)
    if not path.is_file():
        raise FileNotFoundError(2, "table config not found", str(path))
    settings = TableConfig(**(yaml.safe_load(path.read_text()) or {}))
    chosen = next((d for d in settings.datasets if d.name == dataset), None)
    if chosen is None:
        raise ValueError(f"{path}: no dataset {dataset!r} (it has {', '.join(d.name for d in settings.datasets)})")
    return build_datamodule(settings.base, settings.data_overrides(chosen, settings.seeds[0]))


def canonical(config: Mapping[str, Any]) -> str:
    """A configuration's canonical, readable form: ``name=value`` pairs in name order, the NAS
    parameters as one ``arch=<string>``."""
    shown = compact_config(config)
    return ";".join(f"{k}={shown[k]}" for k in sorted(shown))


def build(settings: TableConfig, console: Any = None, shard: tuple[int, int] | None = None) -> dict[str, int]:
    """Train every missing entry of the table; returns counts of the entries by status.

    Studies run one after another (each with the configured executor: a subprocess pool or a
    Dask cluster runs its trials in parallel); a killed build resumes where it stopped.
    ``shard = (k, n)`` builds only studies ``k - 1, k - 1 + n, ...`` of the plan: ``n`` builds
    side by side, each its own studies (and stores), make the whole table."""
    from rich.console import Console

    from facenas.core.progress import bar

    console = console or Console()
    if not settings.root and settings.root_dir == settings.former_root_dir:
        print(
            f"facenas: table {settings.name} continues in {settings.former_root_dir}, its folder before "
            f"runs/hyperfd/{settings.name}",
            file=sys.stderr,
        )
    plan = list(settings.studies())
    if shard is not None:
        plan = plan[shard[0] - 1 :: shard[1]]
    total = sum(len(chosen) for _, _, chosen, _ in plan)
    done = sum(_finished(s) for _, _, _, s in plan)
    part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    console.print(
        f"[bold]table {settings.name}[/]{part}: {len(settings.datasets)} dataset(s), {total} entries, "
        f"{done} already in the table ({settings.root_dir})",
        highlight=False,
    )
    with bar("entries", total, done) as advance:
        for dataset, seed, _, study_settings in plan:

            def record(trial: Trial, result: Result, d: str = dataset.name, s: int = seed) -> None:
                advance()
                values = "  ".join(f"{k}={v:.4f}" for k, v in result.values.items())
                error = f"  [red]{result.error}[/]" if result.error else ""
                console.print(
                    f"{d} seed {s} #{trial.id} {result.status.value} {result.duration:.0f}s  {values}{error}",
                    highlight=False,
                )

            Study(study_settings, console=console, quiet=True, on_record=record).run()
    counts: dict[str, int] = {}
    for row in rows(settings.root_dir):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _finished(settings: StudySettings) -> int:
    if not settings.store_path.is_file():
        return 0
    return sum(t.result is not None for t in StudyStore(settings.store_path, read_only=True).trials())


def rows(root: str | Path) -> list[dict[str, Any]]:
    """Every finished entry of the table under ``root`` (one store per dataset and seed)."""
    root = Path(root)
    stores = sorted(root.glob("*/seed*/study.sqlite"))
    if not stores:
        raise ValueError(f"{root} holds no lookup table (no <dataset>/seed<n>/study.sqlite)")
    out = []
    for path in stores:
        store = StudyStore(path, read_only=True)
        settings = store.get_meta("settings") or {}
        dataset = path.parent.parent.name
        for t in store.trials():
            if t.result is None:
                continue  # in flight when the build stopped: not an entry yet
            values = t.result.values
            out.append(
                {
                    "dataset": dataset,
                    "space": settings.get("space", ""),
                    "configuration": canonical(t.trial.config),
                    "params": json.dumps(t.trial.config, sort_keys=True),
                    "seed": t.trial.seed,
                    "val_ap50": values.get("val/ap50"),
                    "test_ap50": values.get("test/ap50"),
                    "train_seconds": round(t.result.duration, 1),
                    "status": t.status.value,
                    "error": t.result.error or "",
                    "key": config_key(t.trial.config),
                }
            )
    return out


def export(root: str | Path, out: str | Path) -> int:
    """The table as CSV, one row per entry (:data:`COLUMNS`); returns the number of rows."""
    table = rows(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return len(table)


__all__ = [
    "COLUMNS",
    "OBJECTIVES",
    "Dataset",
    "TableConfig",
    "build",
    "canonical",
    "export",
    "rows",
]
