"""The bias-mitigation methods FR-NAS compares with (Flipped, Angular, SensitiveNets): each
mechanism acts as configured, and each trains from YAML switches on FaceID."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facenas.callbacks import FairnessMetrics, probe_layers
from facenas.models.recognition import ArcFace, CosFace, FaceID, MagFace
from facenas.models.recognition.mitigation import Angular, Flipped, SensitiveNets, create_mitigation

from .conftest import synthetic_identities

GROUPS = ["female", "male"]


def bound(method, dim=8):
    model = torch.nn.Module()
    model.embedding_size = dim
    method.bind(model, GROUPS)
    return method


def test_flipped_flips_at_the_rate_only_in_the_chosen_group():
    torch.manual_seed(0)
    n, classes = 20000, 50
    labels = torch.randint(0, classes, (n,))
    groups = torch.randint(0, 2, (n,))
    method = bound(Flipped(fraction=0.2, group="male"))
    new, logs = method.labels(labels, groups, classes)
    changed = new != labels
    male = groups == 1
    rate = changed[male].float().mean().item()
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / male.sum().item())  # within 4 standard errors
    assert not changed[~male].any()  # the other group is never touched
    assert ((new >= 0) & (new < classes)).all()
    assert logs["mitigation_group"] == 1 and logs["flipped"] == pytest.approx(changed.float().mean().item())
    # the new identities are spread over the others, not one fixed class
    assert len(set(new[changed].tolist())) > classes // 2


def test_flipped_follows_the_last_validation_and_waits_for_one():
    labels, groups = torch.arange(100) % 10, torch.arange(100) % 2
    method = bound(Flipped(fraction=1.0))
    new, logs = method.labels(labels, groups, 10)
    assert torch.equal(new, labels) and logs["mitigation_group"] == -1  # no validation yet: nothing flipped
    method.observe({"female": 0.9, "male": 0.6})  # female is the better group
    new, logs = method.labels(labels, groups, 10)
    assert logs["mitigation_group"] == 0
    assert (new[groups == 0] != labels[groups == 0]).all() and torch.equal(new[groups == 1], labels[groups == 1])
    with pytest.raises(ValueError, match="not one of the data's groups"):
        bound(Flipped(group="nobody")).labels(labels, groups, 10)


@pytest.mark.parametrize("head_cls", [CosFace, ArcFace, MagFace])
def test_angular_margins_differ_per_group_as_configured(head_cls):
    torch.manual_seed(0)
    head = head_cls(8, 6)
    x, y = torch.randn(6, 8) * 20, torch.arange(6)
    groups = torch.tensor([0, 0, 0, 1, 1, -1])
    method = bound(Angular(margins={"female": 0.2}))
    extra = method.extra_margin(groups)
    assert extra.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0, 0.0, 0.0])  # unknown group (-1): no extra
    plain, _ = head(x, y)
    with_margin, _ = head(x, y, extra)
    label = with_margin.gather(1, y[:, None])[:, 0]
    base = plain.gather(1, y[:, None])[:, 0]
    # the same head with its margin raised by 0.2 gives the female rows' logits
    raised = head_cls(8, 6)
    raised.load_state_dict(head.state_dict())
    if head_cls is MagFace:
        raised.l_m, raised.u_m = head.l_m + 0.2, head.u_m + 0.2
    else:
        raised.margin = head.margin + 0.2
    want, _ = raised(x, y)
    torch.testing.assert_close(label[:3], want.gather(1, y[:, None])[:3, 0])
    torch.testing.assert_close(label[3:], base[3:])
    others = torch.ones_like(plain, dtype=torch.bool).scatter(1, y[:, None], False)
    torch.testing.assert_close(with_margin[others], plain[others])  # only the label column moves


def test_angular_from_validation_gives_the_margin_to_the_worse_group():
    method = bound(Angular(margin=0.15))
    assert method.group_margins() == [0.0, 0.0]  # no validation yet
    method.observe({"female": 0.7, "male": 0.9})
    assert method.group_margins() == [0.15, 0.0]
    method.observe({"female": 0.95, "male": 0.9})
    assert method.group_margins() == [0.0, 0.15]
    with pytest.raises(ValueError, match="margins name groups"):
        bound(Angular(margins={"elsewhere": 0.1}))


def adversarial_training(weight: float, steps: int = 1000):
    """Embeddings from which the group is linearly predictable (one direction encodes it),
    through SensitiveNets' removal network into a CosFace head, with its adversary at ``weight``.
    Returns the adversary's accuracy per step, a fresh linear probe's held-out accuracy on the
    input and on the output, and the identification accuracy on the output."""
    torch.manual_seed(0)
    ids, per_id, dim = 20, 20, 16
    identity_group = torch.arange(ids) % 2
    centres = F.normalize(torch.randn(ids, dim), dim=1) * 3
    centres[:, 0] = torch.where(identity_group == 0, 2.0, -2.0)  # the attribute's direction
    labels = torch.arange(ids).repeat_interleave(per_id)
    groups = identity_group[labels]
    x = centres[labels] + 0.3 * torch.randn(len(labels), dim)
    method = bound(SensitiveNets(adversary_hidden=32, weight=weight), dim)
    head = CosFace(dim, ids, scale=16, margin=0.1)
    opt = torch.optim.Adam([*method.parameters(), *head.parameters()], lr=3e-3)
    adversary_accuracy = []
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (64,))
        z = method.transform(x[batch])
        logits, _ = head(z, labels[batch])
        adversarial, logs = method.loss(z, groups[batch])
        loss = F.cross_entropy(logits, labels[batch]) + adversarial
        opt.zero_grad()
        loss.backward()
        opt.step()
        adversary_accuracy.append(logs["adversary_accuracy"].item())
    method.eval()
    with torch.no_grad():
        z = method.transform(x)
        identified = (head(z)[0].argmax(1) == labels).float().mean().item()
    probe = [probe_layers({"x": v.numpy()}, groups.numpy(), labels.numpy())[0].accuracy for v in (x, z)]
    return np.array(adversary_accuracy), probe, identified


def test_sensitivenets_removes_the_attribute_and_keeps_identity():
    """With the gradient reversed, the adversary first finds the attribute and then loses it,
    and a fresh linear probe on the output does far worse than on the input; without (weight
    0: the adversary trains, the removal network ignores it) the attribute stays. Identities
    are classified either way. (An adversarial game does not reach chance exactly: the
    adversary keeps finding a little.)"""
    accuracy, (before, after), identified = adversarial_training(weight=2.0)
    assert accuracy[:100].max() > 0.95 and accuracy[-300:].mean() < 0.85
    assert before > 0.95 and after < 0.85, (before, after)
    assert identified > 0.9
    control, (_, kept), identified = adversarial_training(weight=0.0)
    assert control[-300:].mean() > 0.95 and kept > 0.95 and identified > 0.9


def fit(model, data, epochs=2, **kw):
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FairnessMetrics(reference_group="female")],
        **kw,
    )
    trainer.fit(model, data)
    return trainer


@pytest.mark.parametrize(
    ("name", "args"),
    [("flipped", {"fraction": 0.5}), ("angular", {"margin": 0.2}), ("sensitivenets", {"adversary_hidden": 16})],
)
def test_each_method_trains_from_faceid_switches(tmp_path, name, args):
    torch.manual_seed(0)
    model = FaceID(
        backbone="dpn_search_small_301", embedding_dim=16, head="cosface", head_args={"scale": 16, "margin": 0.1},
        optimizer="adamw", lr=3e-3, mitigation=name, mitigation_args=args,
    )  # fmt: skip
    trainer = fit(model, synthetic_identities(tmp_path))
    m = trainer.callback_metrics
    assert model.hparams.group_names == GROUPS and model.mitigation.group_names == GROUPS
    assert math.isfinite(m["val/error"].item())
    if name == "flipped":  # the second epoch flips in the group that was better at the first validation
        seen = model.mitigation.accuracy
        assert set(seen) == set(GROUPS)
        better = GROUPS.index(max(GROUPS, key=lambda g: seen[g]))
        assert m["train/mitigation_group"].item() == better and m["train/flipped"].item() > 0
    if name == "angular":
        assert sorted(model.mitigation.group_margins()) == [0.0, 0.2]
    if name == "sensitivenets":
        assert 0.0 <= m["train/adversary_accuracy"].item() <= 1.0


def test_sensitivenets_on_a_frozen_extractor(tmp_path):
    """The paper's setting: a pretrained FaceID checkpoint becomes the frozen extractor; only the
    removal network, the adversary and the head train."""
    torch.manual_seed(0)
    data = synthetic_identities(tmp_path)
    base = FaceID(backbone="dpn_search_small_301", embedding_dim=16, optimizer="adamw", lr=3e-3)
    trainer = fit(base, data, epochs=1)
    ckpt = tmp_path / "base.ckpt"
    trainer.save_checkpoint(ckpt)
    model = FaceID(
        backbone="dpn_search_small_301", embedding_dim=16, optimizer="adamw", lr=3e-3,
        mitigation="sensitivenets", mitigation_args={"extractor": str(ckpt)},
    )  # fmt: skip
    fit(model, data, epochs=1)
    for key, value in base.state_dict().items():
        if key.startswith(("backbone.", "neck.")):  # weights and BatchNorm statistics unchanged
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    assert model.mitigation.removal[-1].weight.abs().sum() > 0  # created as zeros: it trained
    restored = FaceID.load_from_checkpoint(ckpt)  # an ordinary checkpoint still loads
    assert restored.mitigation is None
    with pytest.raises(Exception, match="cannot read the extractor"):
        bound(create_mitigation("sensitivenets", extractor=str(tmp_path / "missing.ckpt")))
