"""FR-NAS's searchable DPN as released: the two operation numberings, the published networks
against a transcription of the released network (dooleys/FR-NAS src/search/dpn107.py), and
FaceID without a neck (the backbone's embedding feeds the head)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict
from functools import partial

import pytest
import torch
from torch import nn

from facenas.models.recognition import (
    FRNAS_PUBLISHED,
    OPERATION_NAMES,
    FaceID,
    code_to_paper,
    create_backbone,
    dpn_search,
    dpn_state_dict_from_timm,
    paper_to_code,
    parse_dpn_name,
)
from facenas.models.recognition.dpn import DPNConfig, SearchableDPN

# ----------------------------------------------------------------------------- the release, transcribed
# The network of src/search/dpn107.py (dooleys/FR-NAS), reduced to what FR-NAS builds (no DPN-b
# blocks, no feature_info); it uses timm's layers as the release does. Its state-dict keys are
# the release's.

timm_layers = pytest.importorskip("timm.layers")
BatchNormAct2d, ConvNormAct = timm_layers.BatchNormAct2d, timm_layers.ConvNormAct
create_conv2d, create_classifier = timm_layers.create_conv2d, timm_layers.create_classifier


class ReleasedBnActConv2d(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size, stride, groups=1, norm_layer=BatchNormAct2d):
        super().__init__()
        self.bn = norm_layer(in_chs, eps=0.001)
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, groups=groups)

    def forward(self, x):
        return self.conv(self.bn(x))


class ReleasedActConv2dBn(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size, stride, groups=1, norm_layer=BatchNormAct2d):
        super().__init__()
        self.bn = norm_layer(out_chs, eps=0.001)
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, groups=groups)

    def forward(self, x):
        return self.bn(self.conv(x))


RELEASED_OP_LIST = [  # (C_in, C_out, groups, stride)
    lambda ci, co, g, s: ReleasedBnActConv2d(ci, co, kernel_size=3, stride=s, groups=g),
    lambda ci, co, g, s: ReleasedBnActConv2d(ci, co, kernel_size=1, stride=s, groups=g),
    lambda ci, co, g, s: ReleasedBnActConv2d(ci, co, kernel_size=5, stride=s, groups=g),
    lambda ci, co, g, s: create_conv2d(ci, co, kernel_size=3, stride=s, groups=g),
    lambda ci, co, g, s: create_conv2d(ci, co, kernel_size=1, stride=s, groups=g),
    lambda ci, co, g, s: create_conv2d(ci, co, kernel_size=5, stride=s, groups=g),
    lambda ci, co, g, s: ReleasedActConv2dBn(ci, co, kernel_size=3, stride=s, groups=g),
    lambda ci, co, g, s: ReleasedActConv2dBn(ci, co, kernel_size=1, stride=s, groups=g),
    lambda ci, co, g, s: ReleasedActConv2dBn(ci, co, kernel_size=5, stride=s, groups=g),
]


class ReleasedCatBnAct(nn.Module):
    def __init__(self, in_chs, norm_layer=BatchNormAct2d):
        super().__init__()
        self.bn = norm_layer(in_chs, eps=0.001)

    def forward(self, x):
        if isinstance(x, tuple):
            x = torch.cat(x, dim=1)
        return self.bn(x)


class ReleasedDualPathBlock(nn.Module):
    def __init__(self, op_choices, in_chs, num_1x1_a, num_3x3_b, num_1x1_c, inc, groups, block_type="normal"):
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.key_stride = 2 if block_type == "down" else 1
        self.c1x1_w_s1 = self.c1x1_w_s2 = None
        if block_type == "proj":
            self.c1x1_w_s1 = ReleasedBnActConv2d(in_chs, num_1x1_c + 2 * inc, kernel_size=1, stride=1)
        elif block_type == "down":
            self.c1x1_w_s2 = ReleasedBnActConv2d(in_chs, num_1x1_c + 2 * inc, kernel_size=1, stride=2)
        self.c1x1_a = RELEASED_OP_LIST[op_choices[0]](in_chs, num_1x1_a, 1, 1)
        self.c3x3_b = RELEASED_OP_LIST[op_choices[1]](num_1x1_a, num_3x3_b, 50, self.key_stride)  # 50: as released
        self.c1x1_c = RELEASED_OP_LIST[op_choices[2]](num_3x3_b, num_1x1_c + inc, 1, 1)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.c1x1_w_s1 is None and self.c1x1_w_s2 is None:
            x_s1, x_s2 = x[0], x[1]
        else:
            x_s = self.c1x1_w_s1(x_in) if self.c1x1_w_s1 is not None else self.c1x1_w_s2(x_in)
            x_s1, x_s2 = x_s[:, : self.num_1x1_c], x_s[:, self.num_1x1_c :]
        x_in = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        out1, out2 = x_in[:, : self.num_1x1_c], x_in[:, self.num_1x1_c :]
        return x_s1 + out1, torch.cat([x_s2, out2], dim=1)


class ReleasedDPN(nn.Module):
    """``DPN(op_choices, num_init_features=128, k_r=200, groups=50, k_sec=(1, 1, 1, 1),
    inc_sec=(20, 64, 64, 128))`` as FR-NAS's search and training scripts build it."""

    def __init__(
        self,
        op_choices,
        small=False,
        num_init_features=128,
        k_r=200,
        groups=50,
        k_sec=(1, 1, 1, 1),
        inc_sec=(20, 64, 64, 128),
        num_classes=1000,
        in_chans=3,
        fc_act_layer=nn.ELU,
    ):
        super().__init__()
        norm_layer = partial(BatchNormAct2d, eps=0.001)
        fc_norm_layer = partial(BatchNormAct2d, eps=0.001, act_layer=fc_act_layer, inplace=False)
        bw_factor = 1 if small else 4
        blocks = OrderedDict()
        blocks["conv1_1"] = ConvNormAct(
            in_chans, num_init_features, kernel_size=3 if small else 7, stride=2, norm_layer=norm_layer
        )
        blocks["conv1_pool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_chs = num_init_features
        for stage, (width, depth, inc) in enumerate(zip((64, 128, 256, 512), k_sec, inc_sec)):
            bw = width * bw_factor
            r = (k_r * bw) // (64 * bw_factor)
            first = "proj" if stage == 0 else "down"
            blocks[f"conv{stage + 2}_1"] = ReleasedDualPathBlock(op_choices, in_chs, r, r, bw, inc, groups, first)
            in_chs = bw + 3 * inc
            for i in range(2, depth + 1):
                blocks[f"conv{stage + 2}_{i}"] = ReleasedDualPathBlock(op_choices, in_chs, r, r, bw, inc, groups)
                in_chs += inc
        blocks["conv5_bn_ac"] = ReleasedCatBnAct(in_chs, norm_layer=fc_norm_layer)
        self.num_features = in_chs
        self.features = nn.Sequential(blocks)
        self.global_pool, self.classifier = create_classifier(in_chs, num_classes, pool_type="avg", use_conv=True)
        self.flatten = nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.classifier(self.global_pool(self.features(x))))


# ----------------------------------------------------------------------------- helpers


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters (small variances make BN's eps visible)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.05 + 0.005)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def assert_same_network(ours: nn.Module, released: nn.Module, x: torch.Tensor) -> None:
    """Load the released network's state dict into ours; in eval mode both give the same output."""
    randomize_batchnorms(released)
    ours.load_state_dict(dpn_state_dict_from_timm(released.state_dict(), ours))  # strict: every key and shape
    ours.eval()
    released.eval()
    with torch.no_grad():
        want, got = released(x), ours(x)
    assert got.shape == want.shape and torch.isfinite(want).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


# ----------------------------------------------------------------------------- numberings


def test_code_and_paper_numberings_translate_both_ways():
    assert code_to_paper("301") == "530" and paper_to_code("530") == "301"  # SMAC_301
    assert code_to_paper("000") == "333" and code_to_paper("010") == "303" and code_to_paper("680") == "473"
    assert code_to_paper("108") == "037" and code_to_paper("728") == "167"  # MO-ASHA_108, NSGA-II_728
    assert code_to_paper((3, 0, 1)) == "530"
    for digits in itertools.product("012345678", repeat=3):
        arch = "".join(digits)
        assert paper_to_code(code_to_paper(arch)) == arch and code_to_paper(paper_to_code(arch)) == arch
    # the released OP_LIST, in the paper's names: BN-act-conv 3/1/5, conv 3/1/5, conv-BN-act 3/1/5
    released = ["BnConv3x3", "BnConv1x1", "BnConv5x5", "Conv3x3", "Conv1x1", "Conv5x5"]
    released += ["Conv3x3Bn", "Conv1x1Bn", "Conv5x5Bn"]
    assert [OPERATION_NAMES[int(code_to_paper(f"{c}00")[0])] for c in range(9)] == released
    with pytest.raises(ValueError, match="three digits"):
        code_to_paper("39")
    with pytest.raises(ValueError, match="three digits"):
        paper_to_code("309")


# ----------------------------------------------------------------------------- against the release


def test_frnas_smac_301_is_the_released_network():
    """``create_backbone("frnas_smac_301")`` is the release's ``DPN([3, 0, 1], ...)``: the same
    parameter count (35.5 M: 33.1 M feature extractor + the 1000-d embedding convolution),
    every weight loads by name, and the same (1, 1000) embedding in eval mode."""
    torch.manual_seed(0)
    ours, released = create_backbone("frnas_smac_301"), ReleasedDPN([3, 0, 1])
    assert count(ours) == count(released) == 35_523_264
    assert count(ours) - count(ours.embedding) == 33_090_264 and ours.embedding.out_channels == 1000
    assert ours.num_features == 1000 and ours.feature_channels == released.num_features == 2432
    assert_same_network(ours, released, torch.randn(1, 3, 112, 112))


@pytest.mark.parametrize("name", sorted(FRNAS_PUBLISHED))
def test_published_networks_have_the_released_parameter_counts(name):
    """Shapes only (meta device): every published network has the release's parameters."""
    code = [int(c) for c in FRNAS_PUBLISHED[name]]
    with torch.device("meta"):
        ours, released = create_backbone(name), ReleasedDPN(code)
    shapes = {k: v.shape for k, v in dpn_state_dict_from_timm(released.state_dict(), ours).items()}
    assert shapes == {k: v.shape for k, v in ours.state_dict().items()}
    assert count(ours) == count(released)


def test_every_released_operation_at_every_position():
    """The nine released operations at each of the three positions (nine architectures, each
    choice once per position), on a narrow network of the released class (``small=True``,
    k_r 50 so the middle operation's 50 groups divide its width): outputs equal ours."""
    config = DPNConfig(16, k_r=50, groups=50, k_sec=(1, 1, 1, 1), inc_sec=(8, 8, 8, 8), bw_factor=1, small_stem=True)
    config = dataclasses.replace(config, embedding_dim=10)
    x = torch.randn(2, 3, 32, 32)
    for c in range(9):
        code = [c, (c + 3) % 9, (c + 6) % 9]
        torch.manual_seed(c)
        released = ReleasedDPN(code, small=True, num_init_features=16, k_r=50, inc_sec=(8, 8, 8, 8), num_classes=10)
        ours = SearchableDPN([int(d) for d in code_to_paper(code)], config)
        assert count(ours) == count(released), code
        assert_same_network(ours, released, x)


def test_dpn_search_frnas_530_is_frnas_smac_301():
    assert parse_dpn_name("dpn_search_frnas_530") == ("frnas", (5, 3, 0))
    with torch.device("meta"):
        by_paper, published = create_backbone("dpn_search_frnas_530"), create_backbone("frnas_smac_301")
    assert repr(by_paper) == repr(published) and by_paper.codes == published.codes == (5, 3, 0)
    assert {k: v.shape for k, v in by_paper.state_dict().items()} == {
        k: v.shape for k, v in published.state_dict().items()
    }
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("frnas_smac_123")  # not a published network


def test_released_depth_vs_the_dpn107_depth():
    """The default variant has DPN-107's depth (4, 8, 20, 3): twelve times FR-NAS's network."""
    with torch.device("meta"):
        deep, released = dpn_search("530"), dpn_search("530", "frnas")
    assert released.config.k_sec == (1, 1, 1, 1) and deep.config.k_sec == (4, 8, 20, 3)
    assert count(deep) == 427_526_384 and count(released) == 35_523_264


def test_released_checkpoint_prefixes_are_removed():
    """FR-NAS saves ``Network(DataParallel(backbone), head).state_dict()``."""
    with torch.device("meta"):
        ours, released = create_backbone("frnas_smac_301"), ReleasedDPN([3, 0, 1])
    saved = {f"backbone.module.{k}": v for k, v in released.state_dict().items()}
    saved["head.weight"] = torch.empty(7058, 1000, device="meta")
    assert set(dpn_state_dict_from_timm(saved, ours)) == set(ours.state_dict())


# ----------------------------------------------------------------------------- FaceID without a neck


def test_faceid_without_neck_feeds_the_backbone_embedding_to_the_head():
    torch.manual_seed(0)
    model = FaceID(backbone="frnas_smac_301", embedding_dim=None, num_classes=5).eval()
    assert model.neck is None and model.head.weight.shape == (5, 1000)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        pooled, embedding = model.features(x)
        torch.testing.assert_close(embedding, model.backbone(x))
    assert pooled.shape == (1, 2432) and embedding.shape == (1, 1000)  # layer N-1: before the embedding conv


def test_faceid_without_neck_trains():
    model = FaceID(backbone="dpn_search_small_301", embedding_dim=None, loss="focal", num_classes=4)
    assert model.head.weight.shape == (4, model.backbone.num_features)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None
    pooled, embedding = model.features(batch["images"])
    torch.testing.assert_close(pooled, embedding)  # a backbone without an embedding layer: both are its output


def test_faceid_neck_arguments_are_checked():
    with pytest.raises(ValueError, match="dropout"):
        FaceID(backbone="dpn_search_small_301", embedding_dim=None, dropout=0.2)
    with pytest.raises(ValueError, match="embedding_dim"):
        FaceID(backbone="dpn_search_small_301", embedding_dim=0)
