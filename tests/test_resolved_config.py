"""One configuration path: the training config a study checks, the report exports, and the dataset
the ``hyperfd`` backend and the lookup table read are the ones ``facenas fit`` builds
(FaceNASCLI's own parser and instantiation), command-line overrides included; the former names
(the ``pool`` backend, ``runs/benchmark/<name>``) still resume what they wrote."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from facenas.core.errors import UserError
from facenas.hyperfd.table.build import TableConfig, dataset_module
from facenas.search.backends import BACKENDS, ListSearcher, create_searcher
from facenas.search.runner import TrialJob
from facenas.search.spaces import load_space
from facenas.search.study import Study, StudySettings
from facenas.search.trial import Objective, Trial
from facenas.training import FaceNASCLI, build_datamodule, resolved_config
from facenas.training.config import datamodule_from_args

from .conftest import REPO

QUICKSTART = str(REPO / "configs/detection/quickstart.yaml")
TINY = REPO / "configs/hyperfd/tiny.yaml"
OBJECTIVES = (Objective("val/ap50", "max"),)


def table_yaml(tmp_path) -> tuple[TableConfig, str]:
    """The tiny lookup table with absolute paths and its synthetic images under ``tmp_path``."""
    data = yaml.safe_load(TINY.read_text())
    data["base"] = [QUICKSTART]
    data["overrides"]["data.init_args.synthetic_root"] = str(tmp_path / "synthetic")
    data["overrides"]["data.init_args.synthetic_images"] = 12
    data["root"] = str(tmp_path / "table")
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(data))
    return TableConfig(**data), str(path)


def fit_datamodule(args: list[str]):
    """The data module ``facenas fit <args>`` trains on (FaceNASCLI's own instantiation)."""
    return FaceNASCLI(args, run=False, save_config_callback=None).datamodule


def same_data(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    assert dict(ours.hparams) == dict(theirs.hparams)  # the parsed init args, as fit records them
    for data in (ours, theirs):
        data.prepare_data()
        data.setup("fit")
    assert set(ours.splits) == set(theirs.splits)
    for part in ours.splits:
        assert [s.name for s in ours.splits[part]] == [s.name for s in theirs.splits[part]], part
        assert [s.boxes.tolist() for s in ours.splits[part]] == [s.boxes.tolist() for s in theirs.splits[part]]


def test_the_table_dataset_is_the_one_its_trials_fit_on(tmp_path):
    settings, path = table_yaml(tmp_path)
    dataset, seed, chosen, study = next(settings.studies())
    # the command line a trial of this study runs (its trial.yaml written as the study writes it)
    job = TrialJob(Trial(0, chosen[0], 1.0, seed), list(OBJECTIVES), study.base, study.overrides, str(tmp_path / "t"))
    job.write_config()
    fit_args = job.args()
    assert fit_args[0] == "fit"
    same_data(dataset_module(path, dataset.name), fit_datamodule(fit_args[1:]))


def test_a_command_line_override_builds_the_same_data_module(tmp_path):
    # one parser serves every call: each data module has its own call's arguments
    assert build_datamodule([QUICKSTART], {"data.init_args.synthetic_images": 7}).hparams.synthetic_images == 7
    args = [
        "--config",
        QUICKSTART,
        "--data.init_args.synthetic_images",
        "10",
        "--data.init_args.synthetic_root",
        str(tmp_path / "synthetic"),
        "--data.init_args.synthetic_domains",
        "[masked]",
    ]
    theirs = fit_datamodule(args)
    assert theirs.hparams.synthetic_images == 10 and theirs.hparams.synthetic_domains == ["masked"]
    same_data(datamodule_from_args(args), theirs)
    overrides = {
        "data.init_args.synthetic_images": 10,
        "data.init_args.synthetic_root": str(tmp_path / "synthetic"),
        "data.init_args.synthetic_domains": ["masked"],
    }
    same_data(build_datamodule([QUICKSTART], overrides), fit_datamodule(args))


def test_the_hyperfd_backend_reads_the_data_fit_builds(tmp_path):
    from facenas.hyperfd.features import extract_features

    from .test_hyperfd_backend import settings, warm_state

    study = settings(tmp_path, "one", "plain", warm_state(tmp_path))
    searcher = create_searcher(study.backend)
    searcher.attach(study)
    searcher.setup(load_space(study.space, 0), study.objectives, None, 0, study.n_trials)
    try:
        args = ["--config", QUICKSTART]
        for key, value in study.overrides.items():
            args += [f"--{key}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]
        data = fit_datamodule(args)
        data.prepare_data()
        data.setup("fit")
        expected = extract_features(data.splits["train"], searcher.method.extractor)
        assert np.array_equal(searcher.features, expected)
    finally:
        searcher.close()


def test_resolved_config_is_what_fit_parses_with_every_default():
    config = resolved_config([QUICKSTART], {"model.init_args.lr": 0.25, "trainer.max_epochs": 3})
    cli = FaceNASCLI(
        ["--config", QUICKSTART, "--model.init_args.lr", "0.25", "--trainer.max_epochs", "3"],
        run=False,
        save_config_callback=None,
    )
    theirs = yaml.safe_load(cli.parser.dump(cli.config, skip_unset=False, skip_link_targets=False))
    for section in ("model", "data", "seed_everything", "optimizer", "lr_scheduler"):
        assert config[section] == theirs[section], section
    assert config["model"]["init_args"]["lr"] == 0.25 and config["trainer"]["max_epochs"] == 3
    assert "gradient_clip_val" in config["trainer"]  # defaults are there: the key checks can see them
    with pytest.raises(UserError, match="nums"):  # a key fit refuses is one line, as fit says it
        resolved_config([QUICKSTART], {"data.init_args.nums": 3})


def test_the_former_pool_backend_name_works_with_a_notice_and_resumes(tmp_path, capsys):
    assert "pool" not in BACKENDS.names() and "list" in BACKENDS.names()
    searcher = create_searcher({"class_path": "pool", "init_args": {"configs": [{"x": 0.5}]}})
    assert isinstance(searcher, ListSearcher) and searcher.name() == "list"
    assert capsys.readouterr().err.strip() == "facenas: backend 'pool' is deprecated; use 'list'"
    from .test_search import toy_space

    def study(backend):
        return StudySettings(
            name="listed",
            space=toy_space(tmp_path),
            objectives=[Objective("err")],
            backend=backend,
            n_trials=1,
            storage=str(tmp_path / "study.sqlite"),
            report=False,
        )

    from facenas.search.trial import Result, Status

    def objective(trial):
        return Result(Status.SUCCESS, {"err": trial.config["x"]})

    config = {"x": 0.5, "y": 0.5}
    Study(study({"class_path": "pool", "init_args": {"configs": [config]}}), objective, quiet=True).run()
    # the same study under the new name resumes the store written under the old one
    store = Study(study({"class_path": "list", "init_args": {"configs": [config]}}), objective, quiet=True).run()
    assert [t.trial.config for t in store.trials()] == [config]
    with pytest.raises(ValueError, match="different backend"):
        Study(study({"class_path": "list", "init_args": {"configs": [{"x": 0.1, "y": 0.5}]}}), objective).run()


def test_a_table_built_in_the_former_folder_resumes_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = TableConfig(**{**yaml.safe_load(TINY.read_text()), "base": [QUICKSTART]})
    assert settings.root_dir == tmp_path.joinpath("runs/hyperfd/tiny").relative_to(tmp_path)
    (tmp_path / "runs/benchmark/tiny/plain/seed0").mkdir(parents=True)
    assert settings.root_dir == settings.former_root_dir
    assert next(settings.studies())[3].runs_dir == "runs/benchmark/tiny/plain/seed0"
    (tmp_path / "runs/hyperfd/tiny").mkdir(parents=True)  # both: the new one
    assert str(settings.root_dir) == "runs/hyperfd/tiny"
