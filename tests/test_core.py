"""The ground floor: registries by name and local weight loading."""

from __future__ import annotations

import pytest
import torch

from core.registry import Registry, UnknownName
from core.weights import load_local_weights


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
    from models.detection import create_backbone

    state = create_backbone("mobilenet_v2_0.25").state_dict()
    dropped = sorted(state)[-1]
    del state[dropped]
    torch.save(state, tmp_path / "mnv2.pth")
    with pytest.warns(UserWarning, match=rf"1 missing \(e.g. {dropped}\)"):
        create_backbone("mobilenet_v2_0.25", pretrained=str(tmp_path / "mnv2.pth"))
