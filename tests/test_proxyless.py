"""HyperFD's detection NAS space: the ProxylessNAS x0.5 backbone and its architecture strings,
FNA's parameter remapping, the `hyperfd_nas` / `hyperfd_joint` spaces and architecture graphs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facenas.models.detection import RetinaFace, create_backbone
from facenas.models.detection.proxyless import (
    OPS,
    Layer,
    ProxylessArch,
    ProxylessBackbone,
    arch_graph,
)
from facenas.models.detection.remap import adapt, remap
from facenas.search.spaces import apply_mapping, check_mapping, config_key, load_space, nas_arch, pool

from .conftest import REPO, run_facenas

LARGEST = ProxylessArch.parse("largest")
SMALLEST = ProxylessArch.parse("smallest")
MIXED = "d2-1-3-4-2-1:e4k3,e6k5/e6k7/e4k5,e4k7,e6k3/e6k3,e4k3,e4k5,e6k7/e6k5,e4k3/e4k7"


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine parameters away from their initial values, so that an equality
    of outputs says something about them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return module.eval()


# ---------------------------------------------------------------- architectures


def test_canonical_strings_round_trip_and_name_the_largest():
    assert str(LARGEST) == "d3-3-4-4-4-1:" + "/".join(",".join(["e6k7"] * d) for d in (3, 3, 4, 4, 4, 1))
    assert LARGEST.depths == (3, 3, 4, 4, 4, 1) and SMALLEST.depths == (1, 1, 2, 3, 2, 1)
    for text in [MIXED, *pool(20, seed=3)]:
        arch = ProxylessArch.parse(text)
        assert str(arch) == text and ProxylessArch.parse(str(arch)) == arch
    assert ProxylessArch.parse(MIXED).stages[0] == (Layer(4, 3), Layer(6, 5))


@pytest.mark.parametrize(
    "text, message",
    [
        ("d2-1-3-4-2:e4k3", "5 depths but 1 stages"),
        ("2-1-3-4-2-1:e4k3", "not of the form"),
        ("d4-1-3-4-2-1:e4k3,e4k3,e4k3,e4k3/e6k7/e4k5,e4k7,e6k3/e6k3,e4k3,e4k5,e6k7/e6k5,e4k3/e4k7", "allows 1, 2, 3"),
        ("d2-1-3-4-2-1:e4k3,e6k5/e6k7/e4k5,e4k7/e6k3,e4k3,e4k5,e6k7/e6k5,e4k3/e4k7", "stage 4 has depth 3 but 2"),
        ("d2-1-3-4-2-1:e4k3,e6k5/e6k7/e4k5,e4k7,e6k3/e6k3,e4k3,e4k5,e6k7/e6k5,e4k3/e3k7", "outside the space"),
        ("d2-1-3-4-2-1:e4k3,e6k5/e6k7/e4k5,e4k7,e6k3/e6k3,e4k3,e4k5,e6k7/e6k5,e4k3/k7", "is not e<expand>k<kernel>"),
    ],
)
def test_malformed_architectures_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        ProxylessArch.parse(text)


def test_backbone_follows_table_3():
    net = ProxylessBackbone(MIXED)
    feats = net(torch.randn(2, 3, 128, 96))
    assert [f.shape[1:] for f in feats] == [(16, 16, 12), (48, 8, 6), (160, 4, 3)]  # strides 8, 16, 32
    assert net.out_channels == [16, 48, 160] and net.stem[0].out_channels == 16
    stage1 = net.stages["stage1"][0]
    assert stage1.expand is None and stage1.project[0].out_channels == 8 and not stage1.residual
    stage2 = net.stages["stage2"]
    assert [b.depthwise[0].kernel_size for b in stage2] == [(3, 3), (5, 5)]
    assert [b.expand[0].out_channels for b in stage2] == [8 * 4, 12 * 6]
    assert [b.depthwise[0].stride for b in stage2] == [(2, 2), (1, 1)] and [b.residual for b in stage2] == [False, True]
    # stage 5 keeps stride 1 and its first layer changes width (32 -> 48): not residual
    stage5 = net.stages["stage5"]
    assert [b.depthwise[0].stride for b in stage5] == [(1, 1)] * 4
    assert [b.residual for b in stage5] == [False, True, True, True]
    assert isinstance(create_backbone(f"proxyless_x05:{MIXED}"), ProxylessBackbone)
    with pytest.raises(ValueError, match="not of the form"):
        create_backbone("proxyless_x05:e6k7")


@pytest.mark.parametrize("arch", [str(LARGEST), str(SMALLEST), MIXED])
def test_cost_without_training_equals_the_built_network(arch):
    parsed = ProxylessArch.parse(arch)
    net = ProxylessBackbone(parsed)
    cost = parsed.cost((160, 128))
    assert cost["params"] == sum(p.numel() for p in net.parameters())
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 160, 128))
    assert cost["flops"] * 2 == counter.get_total_flops()  # torch counts a multiply-add as 2 FLOPs
    assert ProxylessArch.from_state_dict(net.state_dict()) == parsed


def test_largest_is_the_costliest_architecture():
    largest = LARGEST.cost(320)
    for arch in pool(30, seed=1):
        cost = ProxylessArch.parse(arch).cost(320)
        assert cost["params"] < largest["params"] and cost["flops"] < largest["flops"]


# ---------------------------------------------------------------- remapping


def test_kernel_centre_crop_and_zero_padding_are_exact():
    seed = torch.arange(2 * 1 * 7 * 7, dtype=torch.float32).reshape(2, 1, 7, 7)
    assert torch.equal(adapt(seed, torch.empty(2, 1, 3, 3)), seed[:, :, 2:5, 2:5])
    assert torch.equal(adapt(seed, torch.empty(2, 1, 5, 5)), seed[:, :, 1:6, 1:6])
    small = torch.arange(1, 2 * 9 + 1, dtype=torch.float32).reshape(2, 1, 3, 3)
    padded = adapt(small, torch.full((2, 1, 7, 7), 5.0))
    assert torch.equal(padded[:, :, 2:5, 2:5], small)
    padded[:, :, 2:5, 2:5] = 0
    assert not padded.any()


def test_width_slicing_is_exact_and_1d_tensors_keep_their_init_beyond_the_seed():
    seed = torch.randn(96, 16, 1, 1)  # an expand conv of expand 6 on 16 channels
    assert torch.equal(adapt(seed, torch.empty(64, 16, 1, 1)), seed[:64])
    project = torch.randn(24, 96, 1, 1)
    assert torch.equal(adapt(project, torch.empty(24, 64, 1, 1)), project[:, :64])
    wider = adapt(seed[:64], torch.empty(96, 16, 1, 1))
    assert torch.equal(wider[:64], seed[:64]) and not wider[64:].any()
    bn = torch.randn(64)
    grown = adapt(bn, torch.ones(96))
    assert torch.equal(grown[:64], bn) and torch.equal(grown[64:], torch.ones(32))
    assert torch.equal(adapt(bn, torch.empty(32)), bn[:32])
    # width and kernel at once: a depthwise e6k7 weight onto e4k3
    dw = torch.randn(96, 1, 7, 7)
    assert torch.equal(adapt(dw, torch.empty(64, 1, 3, 3)), dw[:64, :, 2:5, 2:5])


def test_depth_rule_takes_first_layers_and_repeats_the_last():
    seed_arch = ProxylessArch.uniform(6, 7, (2, 1, 3, 4, 2, 1))
    seed = ProxylessBackbone(seed_arch).state_dict()
    target_arch = ProxylessArch.uniform(6, 7, (1, 3, 2, 4, 4, 1))
    out = remap(seed, seed_arch, target_arch)
    key = "stages.stage{}.{}.project.0.weight"
    assert torch.equal(out[key.format(2, 0)], seed[key.format(2, 0)])  # shallower: the first layer
    assert key.format(2, 1) not in out
    assert torch.equal(out[key.format(4, 1)], seed[key.format(4, 1)]) and key.format(4, 2) not in out
    # deeper: layers 1 and 2 of stage 3 repeat the seed's only (last) layer, adapted to their widths: it
    # takes 12 channels in (hidden 72) where they take 16 (hidden 96)
    first = seed[key.format(3, 0)]
    expand = "stages.stage3.{}.expand.0.weight"
    for layer in (1, 2):
        project = out[key.format(3, layer)]
        assert torch.equal(project[:, :72], first) and not project[:, 72:].any()
        grown = out[expand.format(layer)]
        assert grown.shape == (96, 16, 1, 1)
        assert torch.equal(grown[:72, :12], seed[expand.format(0)]) and not grown[72:].any() and not grown[:, 12:].any()
    for layer in (0, 1, 2, 3):  # stage 6: 2 -> 4 layers
        assert torch.equal(out[key.format(6, layer)], seed[key.format(6, min(layer, 1))])
    assert ProxylessBackbone(target_arch).load_state_dict(out)  # every tensor of the target, with its shape


def test_remapping_onto_itself_or_a_wider_kernel_keeps_the_output():
    torch.manual_seed(0)
    seed = randomise_bn(RetinaFace(backbone=f"proxyless_x05:{MIXED}").net)
    state = seed.state_dict()
    images = torch.randn(2, 3, 96, 96)
    same = RetinaFace(backbone=f"proxyless_x05:{MIXED}").net.eval()
    same.load_state_dict(remap(state, MIXED, MIXED))
    # a target whose every layer is expand 6, kernel 7 at the same depths: the extra channels are
    # zero and the kernels zero-padded, so it computes the same function
    widest = ProxylessArch.uniform(6, 7, ProxylessArch.parse(MIXED).depths)
    wide = RetinaFace(backbone=f"proxyless_x05:{widest}").net.eval()
    wide.load_state_dict(remap(state, MIXED, widest))
    with torch.no_grad():
        expected = seed(images)
        for net in (same, wide):
            for a, b in zip(net(images), expected):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a narrower target is a different function (it loses channels)
    narrow = RetinaFace(backbone="proxyless_x05:smallest").net.eval()
    narrow.load_state_dict(remap(state, MIXED, SMALLEST))
    with torch.no_grad():
        assert not torch.allclose(narrow(images)[1], expected[1], atol=1e-3)


def test_remap_refuses_a_seed_of_another_architecture():
    seed = ProxylessBackbone(MIXED).state_dict()
    with pytest.raises(ValueError, match="holds architecture d2-1-3-4-2-1"):
        remap(seed, LARGEST, SMALLEST)


def test_retinaface_remap_from_a_training_checkpoint(tmp_path):
    torch.manual_seed(0)
    largest = RetinaFace(backbone="proxyless_x05:largest")
    randomise_bn(largest.net)
    torch.save({"state_dict": largest.state_dict(), "hyper_parameters": dict(largest.hparams)}, tmp_path / "l.ckpt")
    model = RetinaFace(backbone=f"proxyless_x05:{MIXED}", remap_from=str(tmp_path / "l.ckpt"))
    expected = remap(largest.net.state_dict(), LARGEST, MIXED)
    got = model.net.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert torch.equal(got["fpn.laterals.0.0.weight"], largest.net.state_dict()["fpn.laterals.0.0.weight"])
    with pytest.raises(ValueError, match="needs a proxyless_x05"):
        RetinaFace(remap_from=str(tmp_path / "l.ckpt"))
    with pytest.raises(ValueError, match="outside the backbone"):
        RetinaFace(backbone=f"proxyless_x05:{MIXED}", channels=64, remap_from=str(tmp_path / "l.ckpt"))
    with pytest.raises(ValueError, match="not both"):
        RetinaFace(backbone=f"proxyless_x05:{MIXED}", weights="x.pt", remap_from=str(tmp_path / "l.ckpt"))


def test_shipped_largest_network_loads_and_seeds_a_sampled_architecture():
    """The largest network trained on the WIDER subset ships by name; it loads as a detector and
    remaps onto any architecture of the space."""
    from facenas.models.detection.pretrained import load_detector_state, resolve_weights

    state, _ = load_detector_state(resolve_weights("largest_wider_subset_320"))
    largest = RetinaFace(backbone="proxyless_x05:largest", weights="largest_wider_subset_320").net
    assert all(torch.equal(largest.state_dict()[k], v.float()) for k, v in state.items())
    sampled = RetinaFace(backbone=f"proxyless_x05:{MIXED}", remap_from="largest_wider_subset_320").net
    expected = remap({k: v.float() for k, v in state.items()}, LARGEST, MIXED)
    assert all(torch.equal(sampled.state_dict()[k], expected[k]) for k in expected)


def test_fit_trains_a_sampled_architecture_from_scratch_then_remapped(tmp_path):
    """`facenas fit` with `--model.init_args.backbone proxyless_x05:<arch>`, then a sampled
    architecture initialised by `--model.init_args.remap_from` the first run's checkpoint."""
    common = [
        "--config",
        str(REPO / "configs/detection/quickstart.yaml"),
        "--data.init_args.synthetic_images",
        "24",
        "--data.init_args.image_size",
        "128",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.check_val_every_n_epoch",
        "1",
    ]
    out = run_facenas("fit", *common, "--model.init_args.backbone", "proxyless_x05:largest", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = tmp_path / "runs/detection_quickstart/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["hyper_parameters"]["backbone"] == "proxyless_x05:largest"
    target = pool(1, seed=5)[0]
    out = run_facenas(
        "fit", *common, "--model.init_args.backbone", f"proxyless_x05:{target}", "--model.init_args.remap_from",
        str(ckpt), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    trained = torch.load(tmp_path / "runs/detection_quickstart/version_1/checkpoints/last.ckpt", weights_only=False)
    assert trained["hyper_parameters"]["remap_from"] == str(ckpt)
    assert ProxylessArch.from_state_dict(trained["state_dict"], "net.backbone.") == ProxylessArch.parse(target)
    bad = run_facenas("fit", *common, "--model.init_args.remap_from", str(ckpt), cwd=tmp_path)
    assert bad.returncode == 2 and "remap_from needs a proxyless_x05" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ---------------------------------------------------------------- spaces


def test_nas_space_samples_are_valid_and_their_strings_unique():
    space = load_space("hyperfd_nas", seed=0)
    configs = space.sample_configuration(400)
    strings = {}
    for config in configs:
        values = dict(config)
        arch = ProxylessArch.parse(nas_arch(values))
        # inactive layers are absent: one (expand, kernel) pair per present layer, plus the depths
        assert len(values) == 5 + 2 * sum(arch.depths)
        strings.setdefault(nas_arch(values), set()).add(config_key(values))
    assert all(len(keys) == 1 for keys in strings.values())  # one configuration per string
    depths = {ProxylessArch.parse(s).depths for s in strings}
    assert {d[3] for d in depths} == {3, 4} and {d[0] for d in depths} == {1, 2, 3}


def test_pool_is_distinct_and_seeded():
    first = pool(200, seed=0)
    assert len(set(first)) == 200 and pool(200, seed=0) == first
    assert pool(10, seed=0) == first[:10] and pool(10, seed=1) != first[:10]


def test_joint_space_and_the_arch_mapping():
    joint = load_space("hyperfd_joint", seed=0)
    hpo = load_space("hyperfd_hpo")
    nas = load_space("hyperfd_nas")
    assert set(joint.keys()) == set(hpo.keys()) | set(nas.keys())
    mapping = {"model.init_args.backbone": "proxyless_x05:{arch}", "model.init_args.lr": "lr"}
    # the architecture's parameters count as used through {arch}; the other HPO ones are unused
    assert check_mapping(mapping, joint) == sorted(set(hpo.keys()) - {"lr"})
    config = dict(joint.sample_configuration())
    overrides = apply_mapping(config, mapping)
    assert overrides["model.init_args.backbone"] == f"proxyless_x05:{nas_arch(config)}"
    assert overrides["model.init_args.lr"] == config["lr"]
    with pytest.raises(ValueError, match="'arch' is not a parameter of space 'hyperfd_hpo'"):
        check_mapping({"model.init_args.backbone": "proxyless_x05:{arch}"}, hpo)


# ---------------------------------------------------------------- graphs


def test_arch_graph_is_a_chain_with_op_and_stage_one_hots():
    for arch in (MIXED, str(LARGEST)):
        parsed = ProxylessArch.parse(arch)
        graph = arch_graph(arch)
        n = sum(parsed.depths)
        assert graph.num_nodes == n and graph.x.shape == (n, len(OPS) + 6)
        assert graph.edge_index.tolist() == [list(range(n - 1)), list(range(1, n))]
        assert torch.equal(graph.x.sum(1), torch.full((n,), 2.0))
        for row, (stage, _, layer) in zip(graph.x, parsed.layers()):
            assert row[: len(OPS)].argmax().item() == OPS.index(str(layer))
            assert row[len(OPS) :].argmax().item() == stage - 2
    mixed = arch_graph(MIXED)
    assert mixed.num_nodes == 13 and mixed.x[0, OPS.index("e4k3")] == 1 and mixed.x[1, OPS.index("e6k5")] == 1


def test_remap_from_a_mobilenet_v2_detector_where_layers_coincide(tmp_path):
    """MobileNetV2 x0.5 is d2-3-4-3-3-1 of the space with every layer e6k3 (torchvision rounds
    stage 2 to 16 channels where the space has 12): its layers map onto the largest network's,
    exactly where shapes coincide, kernels centred in zeros."""
    from facenas.models.detection.pretrained import export_weights

    torch.manual_seed(0)
    mnv2 = RetinaFace()
    randomise_bn(mnv2.net)
    torch.save({"state_dict": mnv2.state_dict()}, tmp_path / "mnv2.ckpt")
    export_weights(tmp_path / "mnv2.ckpt", tmp_path / "mnv2.pt")
    model = RetinaFace(backbone="proxyless_x05:largest", remap_from=str(tmp_path / "mnv2.ckpt"))
    got, seed = model.net.state_dict(), mnv2.net.state_dict()
    assert torch.equal(got["backbone.stem.0.weight"], seed["backbone.stages.0.0.0.weight"])
    assert torch.equal(got["backbone.stages.stage1.0.project.0.weight"], seed["backbone.stages.0.1.conv.1.weight"])
    # stage 4, layer 1 (features.8): the same widths; kernel 3 in the centre of 7
    dw = got["backbone.stages.stage4.1.depthwise.0.weight"]
    assert torch.equal(dw[:, :, 2:5, 2:5], seed["backbone.stages.1.8.conv.1.0.weight"])
    dw[:, :, 2:5, 2:5] = 0
    assert not dw.any()
    bn = "running_var"
    assert torch.equal(got[f"backbone.stages.stage4.1.project.1.{bn}"], seed[f"backbone.stages.1.8.conv.3.{bn}"])
    # stage 5 has 3 layers in MobileNetV2, 4 in the largest network: the 4th repeats the 3rd (features.13)
    assert torch.equal(got["backbone.stages.stage5.3.expand.0.weight"], seed["backbone.stages.1.13.conv.0.0.weight"])
    # stage 2: 16 channels in torchvision, 12 in the space: the leading ones
    assert torch.equal(got["backbone.stages.stage2.0.project.0.weight"], seed["backbone.stages.0.2.conv.2.weight"][:12])
    assert torch.equal(got["fpn.laterals.2.0.weight"], seed["fpn.laterals.2.0.weight"])
    exported = RetinaFace(backbone="proxyless_x05:largest", remap_from=str(tmp_path / "mnv2.pt")).net.state_dict()
    assert torch.equal(exported["fpn.merges.0.0.weight"], seed["fpn.merges.0.0.weight"].half().float())
    with pytest.raises(ValueError, match="neither a NAS-space nor a MobileNetV2 detector"):
        torch.save({"state_dict": {"net.x": torch.zeros(1)}}, tmp_path / "other.ckpt")
        RetinaFace(backbone="proxyless_x05:largest", remap_from=str(tmp_path / "other.ckpt"))
