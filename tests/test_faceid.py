"""Face identification: the searchable DPN space, margin heads against their formulas, the
FaceID module and data module, verification accuracy, and a real short fit with fairness
metrics."""

from __future__ import annotations

import io
import itertools
import math
import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facenas.callbacks import FairnessMetrics, VerificationAccuracy, extract_layers, probe_layers, verification_accuracy
from facenas.datamodules.recognition import FaceIDDataModule
from facenas.datamodules.recognition.formats import write_verification_bin
from facenas.models.recognition import (
    OPERATION_NAMES,
    ArcFace,
    CosFace,
    FaceID,
    MagFace,
    create_backbone,
    create_head,
    dpn_search,
    focal_loss,
    parse_dpn_name,
    searchable_op,
)

from .conftest import REPO, data_path, synthetic_identities

# ----------------------------------------------------------------------------- searchable DPN


@pytest.mark.parametrize("code", range(9))
def test_each_operation_matches_its_definition(code):
    op = searchable_op(code, 8, 16, stride=1, groups=1)
    conv = next(m for m in op if isinstance(m, torch.nn.Conv2d))
    assert conv.kernel_size == ((1, 1), (3, 3), (5, 5))[code // 3]
    kinds = [type(m).__name__ for m in op]
    expected = {0: ["BatchNorm2d", "ReLU", "Conv2d"], 1: ["Conv2d", "BatchNorm2d", "ReLU"], 2: ["Conv2d"]}[code % 3]
    assert kinds == expected
    assert OPERATION_NAMES[code].startswith("Bn" if code % 3 == 0 else "Conv")
    assert all(m.eps == 1e-3 for m in op if isinstance(m, torch.nn.BatchNorm2d))  # timm's and FR-NAS's eps
    assert op(torch.randn(2, 8, 9, 9)).shape == (2, 16, 9, 9)


def test_middle_operation_keeps_groups_and_stride():
    block = dpn_search("478", "small").blocks[1]  # the down-sampling first block of the second stage
    middle = next(m for m in block.op_b if isinstance(m, torch.nn.Conv2d))
    first = next(m for m in block.op_a if isinstance(m, torch.nn.Conv2d))
    assert middle.groups == 8 and middle.stride == (2, 2) and middle.kernel_size == (5, 5)
    assert first.groups == 1 and first.stride == (1, 1) and first.kernel_size == (3, 3)


@pytest.mark.parametrize(("variant", "name"), [("68", "dpn68"), ("", "dpn107")])
def test_architecture_030_is_timm_dpn68_and_dpn107(variant, name):
    """030 puts DPN's own operations (1x1 BN-first, grouped 3x3 BN-first, 1x1 BN-first) in every
    block: timm's DPN-68 / DPN-107 (stem max-pool, BN eps 1e-3, BN -> ELU before the pooling).
    Their state dict loads into ours by name and both give the same features in eval mode.

    The last activation: DPN's is ELU (``fc_act_layer``; timm 0.6 and FR-NAS's copy build it),
    but timm 1.0's ``get_norm_act_layer`` keeps the ReLU already bound into ``norm_layer``, so
    the installed timm ends with ReLU; it is set back to ELU here."""
    import timm

    from facenas.models.recognition import dpn_state_dict_from_timm

    torch.manual_seed(0)
    ours, theirs = dpn_search("030", variant).eval(), timm.create_model(name, num_classes=0).eval()
    theirs.features.conv5_bn_ac.bn.act = torch.nn.ELU()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random BN statistics, so that eps and the BN positions matter
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
    assert {m.eps for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    ours.load_state_dict(dpn_state_dict_from_timm(theirs.state_dict(), ours))  # strict: every key and shape
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want_map, want = theirs.forward_features(x), theirs(x)
        got_map, got = ours.forward_features(x), ours(x)
    assert got_map.shape == want_map.shape and got.shape == want.shape == (1, ours.num_features)
    torch.testing.assert_close(got_map, want_map, rtol=1e-4, atol=1e-4 * want_map.abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_sampled_architectures_build_and_run():
    rng = random.Random(0)
    codes = ["000", "888", "301"] + [f"{rng.randrange(9)}{rng.randrange(9)}{rng.randrange(9)}" for _ in range(9)]
    x = torch.randn(2, 3, 32, 32)
    for code in codes:
        model = create_backbone(f"dpn_search_small_{code}").eval()
        out = model(x)
        assert out.shape == (2, model.num_features) and torch.isfinite(out).all(), code


@pytest.mark.slow
def test_all_729_architectures_build_with_consistent_shapes():
    """Every architecture of the space builds and its shapes fit together: built and run on the
    meta device (shapes only, no memory or arithmetic), which keeps this check cheap."""
    x = torch.empty(1, 3, 32, 32, device="meta")
    built = 0
    with torch.device("meta"), torch.no_grad():
        for a, b, c in itertools.product(range(9), repeat=3):
            model = dpn_search((a, b, c), "small").eval()
            assert model(x).shape == (1, model.num_features), (a, b, c)
            built += 1
    assert built == 729


def test_names_and_bad_codes():
    assert parse_dpn_name("dpn_search_301") == ("", (3, 0, 1))
    assert parse_dpn_name("dpn_search_small_480") == ("small", (4, 8, 0))
    assert parse_dpn_name("dpn_search_frnas_530") == ("frnas", (5, 3, 0))
    assert parse_dpn_name("dpn_search_9") is None
    with pytest.raises(ValueError, match="three digits"):
        dpn_search("391x")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_model")


# ----------------------------------------------------------------------------- heads


@pytest.fixture
def head_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g) * 30, torch.randint(0, 10, (16,), generator=g)


def direct_cos(head, x):
    w = head.weight.detach().double()
    xd = x.double()
    return (xd @ w.T) / xd.norm(dim=1, keepdim=True) / w.norm(dim=1)[None, :]


def test_cosface_formula(head_inputs):
    x, y = head_inputs
    head = CosFace(8, 10, scale=64, margin=0.35)
    logits, reg = head(x, y)
    cos = direct_cos(head, x)
    want = 64 * (cos - 0.35 * F.one_hot(y, 10))
    torch.testing.assert_close(logits.double(), want, rtol=1e-4, atol=1e-3)
    assert reg is None
    torch.testing.assert_close(head(x)[0].double(), 64 * cos, rtol=1e-4, atol=1e-3)


def test_arcface_formula_and_fallback(head_inputs):
    x, y = head_inputs
    head = ArcFace(8, 10, scale=64, margin=0.5)
    logits, _ = head(x, y)
    cos = direct_cos(head, x)
    theta = torch.acos(cos.gather(1, y[:, None])[:, 0].clamp(-1, 1))
    target = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5), torch.cos(theta) - 0.5 * math.sin(0.5))
    torch.testing.assert_close(logits.gather(1, y[:, None])[:, 0].double(), 64 * target, rtol=1e-4, atol=1e-3)
    others = torch.ones_like(cos, dtype=torch.bool).scatter(1, y[:, None], False)
    torch.testing.assert_close(logits.double()[others], 64 * cos[others], rtol=1e-4, atol=1e-3)
    # an embedding pointing away from its class centre (theta > pi - m) uses the linear fallback
    anti = -head.weight.detach()[3:4] * 5
    logit = head(anti, torch.tensor([3]))[0][0, 3].item()
    assert logit == pytest.approx(64 * (-1 - 0.5 * math.sin(0.5)), rel=1e-4)


def at_angle(head, labels, thetas, magnitudes):
    """Embeddings at angle ``theta`` from their class centre, with the given magnitudes."""
    g = torch.Generator().manual_seed(1)
    centre = F.normalize(head.weight.detach().double()[labels])
    other = torch.randn(centre.shape, generator=g, dtype=torch.float64)
    other = F.normalize(other - (other * centre).sum(1, keepdim=True) * centre)
    thetas, magnitudes = torch.tensor(thetas).double(), torch.tensor(magnitudes).double()
    return (magnitudes[:, None] * (thetas.cos()[:, None] * centre + thetas.sin()[:, None] * other)).float()


@pytest.mark.parametrize("easy_margin", [False, True])
def test_magface_margin_both_branches_regulariser_and_gradient(easy_margin):
    head = MagFace(8, 10, easy_margin=easy_margin)  # l_a 10, u_a 110, l_m 0.45, u_m 0.8, lambda_g 20, scale 32
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8])
    thetas = [0.3, 1.2, 2.0, 2.2, 2.6, 3.0, 3.1, 0.8, 2.45]
    x = at_angle(head, labels, thetas, [5.0, 20, 60, 100, 30, 80, 120, 50, 90]).requires_grad_(True)
    logits, reg = head(x, labels)
    a = x.detach().double().norm(dim=1).clamp(10, 110)
    m = (0.8 - 0.45) / (110 - 10) * (a - 10) + 0.45
    theta = torch.acos(direct_cos(head, x.detach()).gather(1, labels[:, None])[:, 0])
    # FR-NAS: cos(theta + m) while theta + m < pi, else cos(theta) unchanged;
    # official MagFace (easy margin): cos(theta + m) while theta < pi / 2, else cos(theta)
    margined = theta < math.pi / 2 if easy_margin else theta + m < math.pi
    target = torch.where(margined, torch.cos(theta + m), torch.cos(theta))
    assert margined.any() and (~margined).any()  # both branches are hit
    torch.testing.assert_close(logits.gather(1, labels[:, None])[:, 0].double(), 32 * target, rtol=1e-4, atol=1e-3)
    others = torch.ones_like(logits, dtype=torch.bool).scatter(1, labels[:, None], False)
    torch.testing.assert_close(logits.double()[others], 32 * direct_cos(head, x.detach())[others], rtol=1e-4, atol=1e-3)
    g = a / 110**2 + 1 / a
    assert reg.item() == pytest.approx(20 * g.mean().item(), rel=1e-5)
    # d(lambda_g * mean g(a)) / dx = lambda_g / B * g'(a) * x / |x| with g'(a) = 1/u_a^2 - 1/a^2 (inside the clamp)
    grad = torch.autograd.grad(reg, x)[0].double()
    raw = x.detach().double().norm(dim=1)
    inside = (raw > 10) & (raw < 110)
    want = 20 / len(x) * (1 / 110**2 - 1 / raw**2)[:, None] * x.detach().double() / raw[:, None]
    torch.testing.assert_close(grad[inside], want[inside], rtol=1e-4, atol=1e-7)
    assert inside.any() and (~inside).any()


def test_magface_branches_differ_where_the_rules_differ():
    """theta = 2.0 with m >= 0.45: FR-NAS's rule still applies the margin (2.0 + m < pi), the
    easy margin does not (theta > pi / 2)."""
    frnas, easy = MagFace(8, 10), MagFace(8, 10, easy_margin=True)
    easy.load_state_dict(frnas.state_dict())
    x = at_angle(frnas, torch.tensor([3]), [2.0], [60.0])
    cos = math.cos(2.0)
    m = (0.8 - 0.45) / 100 * 50 + 0.45
    assert frnas(x, torch.tensor([3]))[0][0, 3].item() == pytest.approx(32 * math.cos(2.0 + m), rel=1e-4)
    assert easy(x, torch.tensor([3]))[0][0, 3].item() == pytest.approx(32 * cos, rel=1e-4)


def test_head_registry_and_focal_loss():
    assert isinstance(create_head("ArcFace", 8, 4, margin=0.3), ArcFace)
    with pytest.raises(ValueError, match="unknown head"):
        create_head("sphereface", 8, 4)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    p = F.softmax(logits, 1).gather(1, labels[:, None])[:, 0]
    assert focal_loss(logits, labels, 2.0).item() == pytest.approx((-((1 - p) ** 2) * p.log()).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- verification


def test_verification_accuracy_ten_fold():
    rng = np.random.default_rng(0)
    issame = np.tile([True, False], 300)
    distances = np.where(issame, rng.uniform(0.2, 1.0, 600), rng.uniform(0.9, 1.8, 600))
    accuracy, _ = verification_accuracy(distances, issame)
    overlap = ((issame & (distances > 0.95)) | (~issame & (distances < 0.95))).mean()
    assert 1 - 2 * overlap < accuracy < 1.0
    assert verification_accuracy(rng.uniform(0, 2, 600), issame)[0] < 0.6


# ----------------------------------------------------------------------------- module and data


def test_faceid_trains_and_logs_fairness(tmp_path):
    torch.manual_seed(0)
    data = synthetic_identities(tmp_path, identities=24, ratios=(2, 1, 1))
    blobs, rng = [], np.random.default_rng(0)
    for _ in range(20):  # ten pairs of random images: one per fold
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
        blobs.append(buf.getvalue())
    pair_set = write_verification_bin(tmp_path / "pairs.bin", blobs, [True, False] * 5)
    model = FaceID(backbone="dpn_search_small_301", embedding_dim=32, head="magface", optimizer="adamw", lr=3e-3)
    evaluation = [FairnessMetrics(reference_group="female"), VerificationAccuracy({"pairs": str(pair_set)})]
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=evaluation,
    )
    trainer.fit(model, data)
    m = trainer.callback_metrics
    assert model.head.weight.shape[0] == data.num_classes == 24  # closed set: every identity is a class
    for key in (
        "val/error",
        "val/rank",
        "val/rank_disparity",
        "val/disparity",
        "val/error_female",
        "val/error_male",
        "val/rank_female",
        "val/rank_by_identity_male",
    ):
        assert math.isfinite(m[key].item()), key
    for key in ("val/ratio", "val/rank_ratio", "val/error_ratio"):
        assert key in m
    assert m["val/probes"].item() == 24 * 2  # two held-out images of every identity
    assert m["val/n_female"].item() + m["val/n_male"].item() == 48
    assert data.group_names == ["female", "male"]
    accuracy = m["val/pairs_accuracy"].item()  # 10-fold verification accuracy, logged each validation
    assert 0.0 <= accuracy <= 1.0 and round(accuracy * 10, 4) == round(accuracy * 10)


@pytest.mark.parametrize("loss", ["ce", "focal"])
@pytest.mark.parametrize("head", ["arcface", "cosface", "magface"])
def test_training_step_with_each_head_and_loss(head, loss):
    model = FaceID(backbone="resnet18", embedding_dim=16, head=head, loss=loss, num_classes=5)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 4])}
    value = model.training_step(batch, 0)
    value.backward()
    assert math.isfinite(value.item()) and model.head.weight.grad is not None


def test_flip_test_embeddings_add_the_mirror_image():
    torch.manual_seed(0)
    model = FaceID(backbone="dpn_search_small_000", embedding_dim=16, num_classes=3).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
    emb = model.embed(x)
    torch.testing.assert_close(emb, F.normalize(plain + mirrored, dim=1))  # FR-NAS: the sum of both views
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert not torch.allclose(emb, F.normalize(plain, dim=1), atol=1e-3)  # the mirror really contributes
    model.hparams.flip_test = False
    torch.testing.assert_close(model.embed(x), F.normalize(plain, dim=1))


def test_celeba_identities_datamodule_balanced_gender(tmp_path):
    root = data_path("celeba_identities")
    data = FaceIDDataModule(
        format="csv",
        annotations=str(root / "labels.csv"),
        images=str(root / "img_celeba"),
        group_column="gender_from_celeba_Male_attr",
        balance_groups=True,
        split_file=str(tmp_path / "split.json"),
        num_workers=0,
        batch_size=8,
    )
    data.setup()
    assert data.group_names == ["female", "male"]
    assert data.num_classes == 36 and sum(len(v) for v in data.splits.values()) == 600
    batch = next(iter(data.val_dataloader()))
    assert batch["images"].shape[1:] == (3, 112, 112) and set(batch["groups"].tolist()) <= {0, 1}


def test_quick_fit_then_probe_verb(tmp_path):
    import json

    import yaml

    from .conftest import run_facenas

    config = {
        "model": {
            "class_path": "facenas.models.recognition.FaceID",
            "init_args": {"backbone": "dpn_search_small_301", "embedding_dim": 32, "optimizer": "adamw", "lr": 3e-3},
        },
        "data": {
            "class_path": "facenas.datamodules.recognition.FaceIDDataModule",
            "init_args": {
                "synthetic_identities": 20,
                "synthetic_images_per_identity": 8,
                "synthetic_size": 32,
                "image_size": 32,
                "split_by": "image",
                "split_ratios": [2, 1, 1],
                "batch_size": 16,
                "num_workers": 0,
            },
        },
        "trainer": {
            "max_epochs": 1,
            "enable_progress_bar": False,
            "accelerator": "cpu",
            "callbacks": str(REPO / "configs/callbacks/recognition.yaml"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "id"},
            },
        },
    }
    path = tmp_path / "id.yaml"
    path.write_text(yaml.safe_dump(config))
    fit = run_facenas("fit", "--config", str(path), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "val/rank_disparity" in fit.stdout and "test/error" in fit.stdout
    (ckpt,) = (tmp_path / "runs/id/version_0/checkpoints").glob("best-*.ckpt")
    out = run_facenas(
        "probe", "--config", str(path), "--ckpt_path", str(ckpt), "--attribute", "gender", "--json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["groups"] == ["female", "male"] and set(report["layers"]) == {"N-1 (backbone)", "N (embedding)"}
    saved = tmp_path / "runs/id/version_0/config.yaml"  # the run's own config, with fit's ckpt_path
    again = run_facenas(
        "probe", "--config", str(saved), "--ckpt_path", str(ckpt), "--attribute", "gender", "--json", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == report
    # the same numbers from the library: the checkpoint's features of the test split, probed by identity
    data = FaceIDDataModule(
        **{
            **config["data"]["init_args"],
            "synthetic_root": str(tmp_path / "data/synthetic_ids"),
            "split_file": str(next((tmp_path / "data/splits").glob("*.json"))),
        }
    )
    data.setup("test")
    model = FaceID.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    want = probe_layers(*extract_layers(model, data.eval_dataloader("test")))
    for result in want:
        got = report["layers"][result.layer]
        assert got["accuracy"] == pytest.approx(result.accuracy) and got["majority"] == pytest.approx(result.majority)
        assert got["test"] == result.test > 0 and got["train"] == result.train > result.test

    # embeddings for eval fairness, written by `facenas predict` (the test split, one row per image)
    predicted = run_facenas("predict", "--config", str(path), "--ckpt_path", "best", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (emb_file,) = (tmp_path / "runs/id").rglob("embeddings.npy")
    emb = np.load(emb_file)
    assert emb.shape == (len(data.splits["test"]), 32)
    report = run_facenas(
        "eval",
        "fairness",
        "--embeddings",
        str(emb_file),
        "--meta",
        str(emb_file.parent / "meta.csv"),
        "--group_column",
        "gender",
        "--reference_group",
        "female",
        "--json",
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    tested = last_logged(tmp_path / "runs/id/version_0/metrics.csv")
    fairness = json.loads(report.stdout)
    assert fairness["probes"] == tested["test/probes"] == len(data.splits["test"])  # every test image is a probe
    assert fairness["error"] == pytest.approx(tested["test/error"], abs=1e-6)  # the logged test error
    missing = run_facenas("probe", "--config", str(path), "--ckpt_path", str(tmp_path / "nope.ckpt"), cwd=tmp_path)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr


def last_logged(metrics_csv):
    import csv

    return {k: float(v) for row in csv.DictReader(open(metrics_csv)) for k, v in row.items() if v}


def test_celeba_format_with_attribute_file(tmp_path):
    root = data_path("celeba_identities")
    data = FaceIDDataModule(
        format="celeba",
        annotations=str(root / "identity_subset.txt"),
        images=str(root / "img_celeba"),
        reader_args={"attributes_file": str(root / "list_attr_celeba_first20000_rows_subset.txt")},
        split_file=str(tmp_path / "split.json"),
        num_workers=0,
    )
    data.setup()
    everything = [s for part in data.splits.values() for s in part]
    assert len(everything) == 600 and data.group_names == ["female", "male"]
    assert sum(s.attributes["gender"] is not None for s in everything) == 180


def test_head_args_per_head_for_searches():
    per_head = {"cosface": {"margin": 0.2}, "magface": {"l_m": 0.3}}
    assert FaceID(head="magface", head_args=per_head, num_classes=3, backbone="dpn_search_small_000").head.l_m == 0.3
    assert FaceID(head="CosFace", head_args=per_head, num_classes=3, backbone="dpn_search_small_000").head.margin == 0.2
    assert FaceID(head="arcface", head_args=per_head, num_classes=3, backbone="dpn_search_small_000").head.margin == 0.5


def test_identification_data_refuses_an_empty_validation_split_and_scales_16_bit_images(tmp_path):
    from facenas.datamodules.images import open_rgb
    from facenas.datamodules.records import DataError

    settings = dict(
        synthetic_identities=6,
        synthetic_images_per_identity=4,
        synthetic_size=32,
        image_size=32,
        synthetic_root=str(tmp_path / "ids"),
        split_by="identity",
        num_workers=0,
    )
    data = FaceIDDataModule(**settings, split_file=str(tmp_path / "none.json"), split_ratios=[1, 0, 0])
    with pytest.raises(DataError, match=r"the val split is empty: the split by identity with ratios \[1, 0, 0\]"):
        data.setup("fit")
    ok = FaceIDDataModule(**settings, split_file=str(tmp_path / "ok.json"), split_ratios=[4, 1, 1])
    ok.setup("fit")  # every split has identities
    # a 16-bit grey PNG keeps its grey level instead of turning white
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.asarray(open_rgb(tmp_path / "deep.png"))[0, 0].tolist() == [117, 117, 117]  # 30000 / 65535 * 255
