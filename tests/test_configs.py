"""Every shipped config under configs/ parses and instantiates: training configs through
`facenas fit --print_config` and a `fast_dev_run` (one training and one validation batch),
search configs into a study with its space and backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import REPO, data_path, run_facenas

CONFIGS = REPO / "configs"
SMALL = {  # shrink the data and batches only; the model, optimiser and callbacks stay as shipped
    "detection/quickstart.yaml": ["--data.init_args.synthetic_images", "20", "--data.init_args.num_workers", "0"],
    "detection/retinaface_mnv2.yaml": [
        "--data.init_args.synthetic_images",
        "20",
        "--data.init_args.image_size",
        "256",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
    ],
    "recognition/quickstart.yaml": ["--data.init_args.synthetic_identities", "8", "--data.init_args.num_workers", "0"],
}


def test_every_config_is_covered():
    shipped = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    covered = (
        set(SMALL)
        | {
            "detection/wider_subset.yaml",
            "detection/pretrained.yaml",
            "recognition/frnas_dpn.yaml",
            "callbacks/detection.yaml",
            "callbacks/recognition.yaml",
            "trainer/cpu.yaml",
            "trainer/gpu.yaml",
            "trainer/ddp.yaml",
            "logger/wandb.yaml",
        }
        | {f"search/{p.name}" for p in (CONFIGS / "search").glob("*.yaml")}
        | {f"hyperfd/{p.name}" for p in (CONFIGS / "hyperfd").glob("*.yaml")}
        | {f"hyperfd/evaluate/{p.name}" for p in (CONFIGS / "hyperfd/evaluate").glob("*.yaml")}
        | {f"recognition/mitigation/{p.name}" for p in (CONFIGS / "recognition/mitigation").glob("*.yaml")}
    )
    assert shipped == covered


@pytest.mark.parametrize(
    "extra", [[], ["trainer/cpu.yaml"], ["trainer/gpu.yaml"], ["trainer/ddp.yaml"], ["logger/wandb.yaml"]]
)
def test_trainer_and_logger_groups_combine_with_a_model_config(tmp_path, extra):
    args = ["--config", str(CONFIGS / "detection/quickstart.yaml")] + [
        a for e in extra for a in ("--config", str(CONFIGS / e))
    ]
    out = run_facenas("fit", *args, "--print_config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert callbacks == [
        "facenas.callbacks.DetectionAP",
        "lightning.pytorch.callbacks.EarlyStopping",
        "facenas.callbacks.WiderPredictionWriter",
    ]
    for group in extra:
        for key, value in yaml.safe_load((CONFIGS / group).read_text())["trainer"].items():
            assert printed["trainer"][key] == value or key == "logger", key


@pytest.mark.parametrize("method", sorted(p.name for p in (CONFIGS / "recognition/mitigation").glob("*.yaml")))
def test_mitigation_config_runs_with_the_recognition_quickstart(tmp_path, method):
    """Each bias-mitigation YAML is a switch on the quickstart: two training epochs with a
    validation after the first, so that methods reading the last validation act in the second."""
    args = [
        "--config",
        str(CONFIGS / "recognition/quickstart.yaml"),
        "--config",
        str(CONFIGS / "recognition/mitigation" / method),
    ]
    small = SMALL["recognition/quickstart.yaml"] + ["--data.init_args.synthetic_root", "ids"]
    out = run_facenas(
        "fit", *args, *small, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.limit_train_batches", "2", "--trainer.logger", "false", "--test_after_fit", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/error" in out.stdout


@pytest.mark.parametrize("config", sorted(SMALL))
def test_training_config_runs_a_fast_dev_run(tmp_path, config):
    out = run_facenas(
        "fit",
        "--config",
        str(CONFIGS / config),
        *SMALL[config],
        "--trainer.fast_dev_run",
        "true",
        "--trainer.accelerator",
        "cpu",
        "--test_after_fit",
        "false",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    monitor = "val/ap50" if config.startswith("detection") else "val/error"
    assert monitor in out.stdout  # the configured evaluation callback logged the model's monitor


def test_wider_subset_config_runs_a_fast_dev_run(tmp_path):
    data_path("widerface")
    out = run_facenas(
        "fit",
        "--config",
        str(CONFIGS / "detection/retinaface_mnv2.yaml"),
        "--config",
        str(CONFIGS / "detection/wider_subset.yaml"),
        "--config",
        str(CONFIGS / "trainer/cpu.yaml"),
        "--data.init_args.image_size",
        "256",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.eval_batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.fast_dev_run",
        "true",
        "--test_after_fit",
        "false",
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/ap50_perceived_gender_female" in out.stdout


def write_images(folder: Path, names: list[str]) -> None:
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / name)


def test_pretrained_config_predicts_a_folder_with_given_weights(tmp_path):
    """`facenas predict --config configs/detection/pretrained.yaml --data.init_args.images DIR`
    with an exported weights file: one prediction file and one drawing per image, nested
    folders kept; weights of another network are one error line."""
    import torch

    from facenas.models.detection import RetinaFace
    from facenas.models.detection.pretrained import export_weights

    model = RetinaFace()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.ckpt")
    info = export_weights(tmp_path / "model.ckpt", tmp_path / "detector.pt")
    half = torch.load(tmp_path / "detector.pt", weights_only=True)
    assert info["tensors"] == len(model.net.state_dict()) and info["bytes"] < 2_000_000
    assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
    photos = tmp_path / "photos"
    write_images(photos, ["a.jpg", "b.png", "trip/c.jpeg"])
    (photos / "notes.txt").write_text("not an image")
    args = ["--config", str(CONFIGS / "detection/pretrained.yaml"), "--data.init_args.images", str(photos)]
    out = run_facenas(
        "predict",
        *args,
        "--model.init_args.weights",
        str(tmp_path / "detector.pt"),
        "--trainer.accelerator",
        "cpu",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = tmp_path / "runs/pretrained/version_0/predictions"
    assert sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*.txt")) == [
        "a.txt",
        "b.txt",
        "trip/c.txt",
    ]
    drawn = sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob("*.*") if p.suffix != ".txt")
    assert drawn == ["a.jpg", "b.png", "detections.jsonl", "trip/c.jpeg"]  # copies keep the image's name
    assert "predictions for 3 images written to" in out.stdout
    # weights for another network: one line, exit 2
    other = RetinaFace(channels=64)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    export_weights(tmp_path / "other.ckpt", tmp_path / "other.pt")
    bad = run_facenas("predict", *args, "--model.init_args.weights", str(tmp_path / "other.pt"), cwd=tmp_path)
    assert bad.returncode == 2 and "do not fit this detector" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def shipped_detector_built() -> bool:
    from facenas.models.detection.pretrained import SHIPPED, WEIGHTS_DIR

    return (WEIGHTS_DIR / SHIPPED["wider_subset_320"][0]).is_file()


@pytest.mark.skipif(
    not shipped_detector_built(),
    reason="the shipped detector is exported from the WIDER-subset run of benchmarks/RESULTS.md when it ends",
)
def test_shipped_detector_finds_wider_faces(tmp_path):
    """The shipped detector, on the first WIDER validation images: it finds most large faces."""
    import torch

    from facenas.callbacks.detection_ap import evaluate_detections
    from facenas.datamodules.detection.formats import read_wider, read_wider_predictions

    root = data_path("widerface")
    samples = read_wider(root / "wider_face_split/wider_face_val_bbx_gt.txt", root / "WIDER_val/images")
    photos = tmp_path / "photos"
    for sample in samples[:12]:
        target = photos / sample.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(sample.image).read_bytes())
    out = run_facenas(
        "predict",
        "--config",
        str(CONFIGS / "detection/pretrained.yaml"),
        "--data.init_args.images",
        str(photos),
        "--trainer.accelerator",
        "cpu",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = read_wider_predictions(tmp_path / "runs/pretrained/version_0/predictions")
    assert len(predicted) == 12
    shown = samples[:12]
    result = evaluate_detections(
        [predicted[str(Path(s.name).with_suffix("").as_posix())] for s in shown],
        [(torch.from_numpy(s.boxes), torch.from_numpy(s.ignore)) for s in shown],
        min_size=40,
    )
    assert result.num_gt >= 10 and result.ap50 > 0.5, result


def test_frnas_dpn_config_runs_a_fast_dev_run_on_celeba(tmp_path):
    root = data_path("celeba_identities")
    out = run_facenas(
        "fit",
        "--config",
        str(CONFIGS / "recognition/frnas_dpn.yaml"),
        "--config",
        str(CONFIGS / "trainer/cpu.yaml"),
        "--data.init_args.format",
        "csv",
        "--data.init_args.annotations",
        str(root / "labels.csv"),
        "--data.init_args.images",
        str(root / "img_celeba"),
        "--data.init_args.group_column",
        "gender_from_celeba_Male_attr",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.eval_batch_size",
        "8",
        "--data.init_args.num_workers",
        "0",
        "--trainer.fast_dev_run",
        "true",
        "--test_after_fit",
        "false",
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/rank_disparity" in out.stdout


@pytest.mark.parametrize("config", sorted(p.name for p in (CONFIGS / "hyperfd").glob("*.yaml")))
def test_benchmark_config_plans_its_studies(config):
    """Every shipped table YAML parses through `facenas hyperfd build`'s options, and each of
    its studies would pass the study's own checks (mapping onto the space, keys the base takes)."""
    from facenas.cli.common import parse
    from facenas.cli.hyperfd import build_parser, table_settings
    from facenas.search.study import Study

    args = parse(build_parser(), ["--config", str(CONFIGS / "hyperfd" / config)])
    settings = table_settings(args)
    settings.base = [str(REPO / p) for p in settings.base]
    studies = list(settings.studies())
    noise_seeds = {int(s) for s in (settings.noise or {}).get("seeds", [])} - set(settings.seeds)
    assert len(studies) == len(settings.datasets) * (len(settings.seeds) + len(noise_seeds))
    for _, _, configs, study in studies:
        study.base = settings.base
        Study(study, quiet=True).check()
        assert len(configs) == study.n_trials


@pytest.mark.parametrize("config", sorted(p.name for p in (CONFIGS / "hyperfd" / "evaluate").glob("*.yaml")))
def test_evaluation_config_names_its_tables_datasets_and_known_methods(config):
    """Every shipped `hyperfd evaluate` YAML parses through the command's options; its table YAML
    exists and holds its offline and online datasets (disjoint), the online ones include both a
    family seen offline and one held out, and its methods and readings are known with accepted
    options."""
    from facenas.hyperfd.methods import method_specs
    from facenas.hyperfd.table.evaluation import dataset_families, online_groups

    path = CONFIGS / "hyperfd" / "evaluate" / config
    out = run_facenas("hyperfd", "evaluate", "--config", str(path), "--print_config")
    assert out.returncode == 0, out.stderr[-3000:]
    settings = yaml.safe_load(path.read_text())
    table = yaml.safe_load((REPO / settings["table_config"]).read_text())
    names = [d["name"] for d in table["datasets"]]
    offline, online = settings["offline"], settings.get("online") or [n for n in names if n not in settings["offline"]]
    assert settings["source"] in offline and set(offline) <= set(names) and set(online) <= set(names)
    assert not set(offline) & set(online)
    families = dataset_families(REPO / settings["table_config"], names)
    assert set(online_groups(online, offline, families)) == {"seen", "held_out", "all"}
    assert method_specs(settings["methods"])


@pytest.mark.parametrize("config", sorted(p.name for p in (CONFIGS / "search").glob("*.yaml")))
def test_search_config_builds_its_study(config):
    from facenas.cli.common import parse
    from facenas.cli.search import search_parser, study_settings
    from facenas.search.backends import create_searcher
    from facenas.search.spaces import apply_mapping, load_space
    from facenas.training import resolved_config

    settings = study_settings(parse(search_parser(), ["--config", str(CONFIGS / "search" / config)]))
    space = load_space(settings.space, settings.seed)
    searcher = create_searcher(settings.backend)
    searcher.attach(settings)  # as the study does (the hyperfd backend reads the study's dataset)
    searcher.setup(space, settings.objectives, settings.budget, settings.seed, settings.n_trials)
    ranker = settings.run_root / "ranker.pt"  # where the hyperfd backend saves its updated ranker
    before = ranker.stat().st_mtime_ns if ranker.exists() else None
    searcher.close()  # nothing ran: close() must not update the ranker
    assert (ranker.stat().st_mtime_ns if ranker.exists() else None) == before

    base = resolved_config([str(REPO / p) for p in settings.base])  # as `facenas fit` resolves it
    sample = dict(space.sample_configuration())
    for key in apply_mapping(sample, settings.mapping):  # every mapped key exists in the training config
        node = base
        for part in key.split(".")[:-1]:
            node = node[part]
        assert key.split(".")[-1] in node, key
    assert all(Path(REPO / p).is_file() for p in settings.base)
