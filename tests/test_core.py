"""The ground floor: registries by name and local weight loading."""

from __future__ import annotations

import pytest
import torch

from facenas.core.registry import Registry, UnknownName
from facenas.core.weights import load_local_weights


def test_registry_register_get_list_and_duplicates():
    heads: Registry[type] = Registry("head", case_sensitive=False)

    @heads.register("cosface")
    class CosFace:
        pass

    heads.register("arcface", dict)
    assert heads.get("CosFace") is CosFace and heads.names() == ["cosface", "arcface"] and "ArcFace" in heads
    with pytest.raises(ValueError, match="head 'cosface' is already registered"):
        heads.register("cosface", list)
    with pytest.raises(UnknownName, match=r"unknown head 'sphereface'; choose from cosface, arcface"):
        heads.get("sphereface")


def test_registry_instantiates_yaml_specs():
    things: Registry[type] = Registry("executor")
    things.register("counter", __import__("collections").Counter)
    assert things.instantiate({"class_path": "counter", "init_args": {"a": 2}}) == {"a": 2}
    assert type(things.instantiate("collections.OrderedDict")).__name__ == "OrderedDict"
    with pytest.raises(ValueError, match="is not a"):
        things.instantiate("collections.OrderedDict", base=list)
    with pytest.raises(UnknownName, match="cannot be imported"):
        things.instantiate("collections.NoSuchThing")


def test_local_weights_load_what_matches_and_report_the_rest(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = source.state_dict()
    del state["1.bias"]  # missing from the file
    state["extra.weight"] = torch.zeros(1)  # a tensor the module has no place for
    state["module.0.bias"] = state.pop("0.bias")  # DataParallel's prefix is removed
    torch.save({"state_dict": state}, tmp_path / "w.ckpt")
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.warns(
        UserWarning, match=r"3 tensors loaded, 1 missing \(e.g. 1.bias\), 1 unexpected \(e.g. extra.weight\)"
    ):
        report = load_local_weights(target, tmp_path / "w.ckpt")
    assert sorted(report.loaded) == ["0.bias", "0.weight", "1.weight"] and report.missing == ["1.bias"]
    torch.testing.assert_close(target[0].weight, source[0].weight)
    torch.save({"other.weight": torch.zeros(5)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_local_weights(target, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_local_weights(target, tmp_path / "nope.pth")


def test_pretrained_backbones_report_missing_keys(tmp_path):
    from facenas.models.detection import create_backbone

    state = create_backbone("mobilenet_v2_0.25").state_dict()
    dropped = sorted(state)[-1]
    del state[dropped]
    torch.save(state, tmp_path / "mnv2.pth")
    with pytest.warns(UserWarning, match=rf"1 missing \(e.g. {dropped}\)"):
        create_backbone("mobilenet_v2_0.25", pretrained=str(tmp_path / "mnv2.pth"))


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_detection_backbone_loads_a_torchvision_mobilenet_v2_state_dict(tmp_path, width):
    """A user's local ImageNet MobileNetV2 (torchvision format) initialises every backbone
    tensor; its final expansion and classifier are dropped without a warning."""
    import warnings

    from torchvision.models import mobilenet_v2

    from facenas.models.detection import create_backbone

    torch.manual_seed(0)
    imagenet = mobilenet_v2(width_mult=width)
    torch.save(imagenet.state_dict(), tmp_path / "mobilenet_v2.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing, nothing unexpected
        backbone = create_backbone(f"mobilenet_v2_{width}", pretrained=str(tmp_path / "mobilenet_v2.pth"))
    own = backbone.state_dict()
    theirs = imagenet.state_dict()
    for index in range(3):
        for key, value in own.items():
            if key.startswith(f"stages.{index}."):
                torch.testing.assert_close(value, theirs["features." + key.split(".", 2)[2]])
    x = torch.randn(1, 3, 64, 64)
    backbone.eval(), imagenet.eval()
    torch.testing.assert_close(backbone(x)[-1], imagenet.features[:18](x))
    # a file for another width loads nothing that fits and says so
    torch.save(mobilenet_v2(width_mult=0.75 if width != 0.75 else 1.0).state_dict(), tmp_path / "other.pth")
    with pytest.warns(UserWarning, match="shape mismatch"):
        create_backbone(f"mobilenet_v2_{width}", pretrained=str(tmp_path / "other.pth"))
