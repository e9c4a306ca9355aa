"""FaceID: backbone -> embedding neck (optional) -> margin head -> loss, with FR-NAS's evaluation."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_finite_loss
from ..optim import build_optimizer, check_optimizer_values
from .backbones import create_backbone
from .heads import HEADS, create_head, focal_loss
from .mitigation import create_mitigation


class EmbeddingNeck(nn.Module):
    """BN -> dropout -> linear -> BN: pooled features (B, F) to embeddings (B, D)."""

    def __init__(self, in_features: int, embedding_dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_features),
            nn.Dropout(dropout),
            nn.Linear(in_features, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class FaceID(pl.LightningModule):
    """Face identification model with FR-NAS's knobs as constructor arguments.

    Args:
        backbone: a timm model name (``resnet50``, ...), a searchable DPN (``dpn_search_301``
            DPN-107-like, ``dpn_search_68_301``, ``dpn_search_small_301``,
            ``dpn_search_frnas_530``) or a published FR-NAS network (``frnas_smac_301``, ...).
        pretrained: local backbone weights (state dict file); nothing is downloaded.
        embedding_dim, dropout: the neck (BN -> dropout -> linear -> BN) to ``embedding_dim``
            outputs. ``embedding_dim: null`` means no neck: the backbone's output is the
            embedding that feeds the head, as FR-NAS trains its DPNs (whose 1000-d embedding
            convolution is part of the ``frnas_smac_*`` backbones); ``dropout`` must then be 0.
        head: a registered head (``arcface``, ``cosface``, ``magface``; case-insensitive);
            ``head_args`` override its defaults
            (e.g. ``{"scale": 64, "margin": 0.35}``, or per head:
            ``{"cosface": {"margin": 0.35}, "arcface": {"margin": 0.5}}``).
        num_classes: training identities; default: the datamodule's ``num_classes``.
        loss: ``ce`` or ``focal`` (with ``focal_gamma``, 2 as FR-NAS).
        optimizer: ``sgd`` (momentum), ``adam`` or ``adamw``; ``lr``, ``weight_decay``.
        warmup_epochs: linear warm-up before the cosine schedule (stepped every batch).
        flip_test: evaluation embeddings are the sum of the image's and its mirror's, as FR-NAS.
        channels_last: channels-last memory format (faster with AMP on GPUs).
        mitigation: a bias-mitigation method (``flipped``, ``angular``, ``sensitivenets``:
            :mod:`facenas.models.recognition.mitigation`) with ``mitigation_args``; None: none.
        group_names: the protected attribute's groups, in the order of the batches' ``groups``
            indices; default: the datamodule's ``group_names``.

    Evaluation (fairness metrics, verification pairs, embedding files) is configured as
    callbacks (``configs/callbacks/recognition.yaml``); ``monitor`` names the metric the best
    checkpoint is chosen by.
    """

    monitor = "val/error"
    monitor_mode = "min"

    def __init__(
        self,
        backbone: str = "dpn_search_small_301",
        pretrained: str | None = None,
        embedding_dim: int | None = 512,
        dropout: float = 0.0,
        head: str = "cosface",
        head_args: dict[str, Any] | None = None,
        num_classes: int | None = None,
        loss: Literal["ce", "focal"] = "ce",
        focal_gamma: float = 2.0,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
        flip_test: bool = True,
        channels_last: bool = False,
        mitigation: str | None = None,
        mitigation_args: dict[str, Any] | None = None,
        group_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {optimizer!r}")
        check_optimizer_values(lr, momentum, weight_decay)
        if loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', got {loss!r}")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive width or null (no neck), got {embedding_dim}")
        if embedding_dim is None and dropout:
            raise ValueError(f"dropout {dropout} needs the neck, but embedding_dim is null (no neck): set dropout 0")
        HEADS.get(head)  # an unknown head fails here, not after the data was read
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, pretrained)
        self.neck = None if embedding_dim is None else EmbeddingNeck(self.backbone.num_features, embedding_dim, dropout)
        self.embedding_size = self.backbone.num_features if embedding_dim is None else embedding_dim
        self.head: nn.Module | None = None
        if num_classes is not None:
            self.build_head(num_classes)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.mitigation = None if mitigation is None else create_mitigation(mitigation, **(mitigation_args or {}))
        if self.mitigation is not None and group_names is not None:
            self.mitigation.bind(self, group_names)

    def build_head(self, num_classes: int) -> None:
        """Create the margin head for ``num_classes`` training identities."""
        self.head = create_head(self.hparams.head, self.embedding_size, num_classes, **self._head_args())
        self.hparams.num_classes = num_classes

    def _head_args(self) -> dict[str, Any]:
        """``head_args`` for the chosen head: either the arguments themselves, or (for searches
        over heads) a dict by head name, e.g. ``{cosface: {margin: 0.35}, arcface: {margin: 0.5}}``."""
        args = dict(self.hparams.head_args or {})
        if args and all(k.lower() in HEADS for k in args):
            return dict(next((v for k, v in args.items() if k.lower() == self.hparams.head.lower()), None) or {})
        return args

    def setup(self, stage: str) -> None:
        if self.head is None:
            num = getattr(self.trainer.datamodule, "num_classes", None) if self.trainer.datamodule is not None else None
            if num is None:
                raise ValueError("FaceID needs num_classes (set it, or use a datamodule with a num_classes attribute)")
            self.build_head(int(num))
        if self.mitigation is not None and self.hparams.group_names is None:
            names = (
                getattr(self.trainer.datamodule, "group_names", None) if self.trainer.datamodule is not None else None
            )
            if not names:
                raise ValueError(
                    f"mitigation {self.hparams.mitigation!r} needs the protected attribute's groups "
                    "(set group_names, or use a datamodule with a group_column)"
                )
            self.hparams.group_names = list(names)
            self.mitigation.bind(self, names)

    def train(self, mode: bool = True) -> FaceID:
        super().train(mode)
        if mode and getattr(self.mitigation, "freezes_extractor", False):  # SensitiveNets on a frozen extractor
            for module in (self.backbone, self.neck):
                if module is not None:
                    module.eval()
        return self

    # ------------------------------------------------------------------ model

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(layer N-1, embeddings: layer N). With a neck, layer N-1 is the backbone's output
        (pooled features); without, the backbone's output is the embedding and layer N-1 is
        what its last layer takes (the FR-NAS DPN's pooled features before its embedding
        convolution: timm's ``forward_head(..., pre_logits=True)``)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.neck is not None:
            pooled = self.backbone(images)
            before, embeddings = pooled, self.neck(pooled)
        elif not hasattr(self.backbone, "forward_head"):
            before = embeddings = self.backbone(images)
        else:
            feature_map = self.backbone.forward_features(images)
            before, embeddings = (
                self.backbone.forward_head(feature_map, pre_logits=True),
                self.backbone.forward_head(feature_map),
            )
        if self.mitigation is not None and self.mitigation.transforms:  # SensitiveNets: layer N is its output
            before, embeddings = embeddings, self.mitigation.transform(embeddings)
        return before, embeddings

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)[1]

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised evaluation embeddings (with the flipped image's added when ``flip_test``)."""
        emb = self(images).float()
        if self.hparams.flip_test:
            emb = emb + self(images.flip(-1)).float()
        return F.normalize(emb, dim=1)

    # ------------------------------------------------------------------ steps

    def on_train_epoch_start(self) -> None:
        if self.mitigation is not None:  # the last validation's per-group accuracy, for methods that read it
            metrics = self.trainer.callback_metrics
            self.mitigation.observe(
                {
                    g: float(metrics[f"val/accuracy_{g}"])
                    for g in self.mitigation.group_names
                    if f"val/accuracy_{g}" in metrics
                }
            )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch["images"], batch["labels"]
        n = len(labels)
        embeddings, extra, logs = self(images), None, {}
        if self.mitigation is not None:
            groups = batch["groups"]
            labels, logs = self.mitigation.labels(labels, groups, self.head.weight.shape[0])
            extra = self.mitigation.extra_margin(groups)
        logits, regularizer = self.head(embeddings, labels, extra)
        loss = (
            focal_loss(logits, labels, self.hparams.focal_gamma)
            if self.hparams.loss == "focal"
            else F.cross_entropy(logits, labels)
        )
        if regularizer is not None:
            loss = loss + regularizer
        if self.mitigation is not None:
            adversarial, more = self.mitigation.loss(embeddings, batch["groups"])
            if adversarial is not None:
                loss = loss + adversarial
            logs.update(more)
        check_finite_loss(self, loss, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for key, value in logs.items():
            self.log(f"train/{key}", value, batch_size=n)
        self.log("train/accuracy", (logits.argmax(1) == labels).float().mean(), batch_size=n)
        return loss

    def _evaluate(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"embeddings": self.embed(batch["images"]), "identities": batch["identities"], "groups": batch["groups"]}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Evaluation embeddings with what identifies each image (for ``facenas.callbacks.EmbeddingWriter``)."""
        out = self._evaluate(batch)
        out.update({k: batch[k] for k in ("paths", "identity_names") if k in batch})
        return out

    # ------------------------------------------------------------------ training policy

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        opt = build_optimizer(h.optimizer, self.parameters(), h.lr, h.momentum, h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, int(round(h.warmup_epochs * total / epochs)))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup))
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=warmup)
            schedule = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])
        else:
            schedule = cosine
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
