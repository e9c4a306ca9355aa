"""Face-identification data: identity folders, CelebA, VGGFace2, generic CSV, insightface
verification pairs, and the synthetic identity generator."""

from __future__ import annotations

from .formats import (
    AGE_BINS,
    IDENTITY_FORMATS,
    VerificationPairs,
    age_bin,
    normalize_gender,
    read_celeba,
    read_identities,
    read_identity_csv,
    read_identity_folders,
    read_verification_bin,
    read_vggface2,
    write_verification_bin,
)
from .synthetic import (
    DEFAULT_GROUPS,
    GroupSpec,
    generate_identity_dataset,
    render_identity_image,
    sample_identity,
)

__all__ = [
    "AGE_BINS",
    "FaceIDDataModule",
    "IdentityDataset",
    "crop_face",
    "DEFAULT_GROUPS",
    "IDENTITY_FORMATS",
    "GroupSpec",
    "VerificationPairs",
    "age_bin",
    "generate_identity_dataset",
    "normalize_gender",
    "read_celeba",
    "read_identities",
    "read_identity_csv",
    "read_identity_folders",
    "read_verification_bin",
    "read_vggface2",
    "render_identity_image",
    "sample_identity",
    "write_verification_bin",
]


# the data modules (and Lightning under them) are imported on first use, so that the readers
# serve `facenas data check` and `facenas eval detections` without paying for Lightning
_LAZY = {"FaceIDDataModule", "IdentityDataset", "crop_face"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
