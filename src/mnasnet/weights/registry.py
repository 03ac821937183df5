"""Every published MnasNet checkpoint we can load, with the facts its publisher gives.

Names read ``<arch>_<width x 100>.<publisher>_<recipe tag>_in1k``:
``b1_100.torchvision_in1k`` is torchvision's ``mnasnet1_0``, ``a1_100.timm_rmsp_in1k``
is timm's ``semnasnet_100.rmsp_in1k``, ``a1_100.google_in1k`` is Google's
``mnasnet-a1`` TF checkpoint. The publisher's own name works as an alias.

URLs, file hashes, preprocessing, accuracy and parameter counts come from the
publishers: torchvision's ``MNASNet*_Weights`` enums, timm's ``default_cfgs`` and
results tables, and the tensorflow/tpu MnasNet README.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any

from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import MnasNetError

__all__ = ["Weights", "get_weights", "list_weights", "register_weights"]


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published checkpoint.

    Attributes:
        name: our registry name.
        url: where the publisher serves the file.
        sha256: the file's SHA-256 as the publisher gives it: torchvision and timm
            put its first 8-10 hex digits in the file name (``torch.hub``'s
            convention), checked as a prefix. ``None``: the publisher gives none.
        hash_source: where ``sha256`` comes from, or why there is none.
        arch: our architecture name (``a1``, ``b1``, ``small``).
        width_multiplier: the width the publisher trained.
        source: the file's format, which picks the converter: ``"torchvision"``,
            ``"timm"`` (PyTorch state dicts) or ``"tf"`` (a TF checkpoint ``.tgz``).
        preprocess: the evaluation preprocessing the publisher measured with.
        top1, top5: published ImageNet-1k validation accuracy (percent); ``None`` if not published.
        num_params: parameter count of the model (recomputed by the tests).
        license: the licence the publisher states for the weights or their code.
        publisher_name: the publisher's own name for the weights (also an alias).
        aliases: further names that resolve to this entry.
        mirrors: other URLs serving the same file, tried in order after ``url``.
        notes: anything a user should know (provenance caveats).
    """

    name: str
    url: str
    sha256: str | None
    hash_source: str
    arch: str
    width_multiplier: float
    source: str
    preprocess: Preprocess
    top1: float | None
    top5: float | None
    num_params: int
    license: str
    publisher_name: str
    aliases: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    num_classes: int = 1000
    labels: str = "imagenet-1k"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.source not in ("torchvision", "timm", "tf"):
            raise ValueError(f"unknown weights source {self.source!r}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{8,64}", self.sha256):
            raise ValueError(f"sha256 of {self.name} must be 8-64 lowercase hex digits, got {self.sha256!r}")

    @property
    def file_name(self) -> str:
        """The publisher's file name (the last part of ``url``)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data


_REGISTRY: dict[str, Weights] = {}
_ALIASES: dict[str, str] = {}


def register_weights(weights: Weights) -> Weights:
    """Adds an entry (e.g. a private mirror); its name and aliases must be new."""
    for key in (weights.name, weights.publisher_name, *weights.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != weights.name:
            raise ValueError(f"weights name {key!r} is already taken by {owner!r}")
    if weights.name in _REGISTRY:
        raise ValueError(f"weights {weights.name!r} are already registered")
    _REGISTRY[weights.name] = weights
    for key in (weights.name, weights.publisher_name, *weights.aliases):
        _ALIASES[key] = weights.name
    return weights


def list_weights() -> list[Weights]:
    """All registered weights, in registration order."""
    return list(_REGISTRY.values())


class UnknownWeightsError(MnasNetError, ValueError):
    """No registry entry has the name given (and no file has that path)."""


def get_weights(name: str) -> Weights:
    """Looks up an entry by our name or the publisher's.

    Raises:
        ValueError: no entry has that name (the message suggests close ones).
    """
    if name in _ALIASES:
        return _REGISTRY[_ALIASES[name]]
    close = difflib.get_close_matches(name, list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownWeightsError(
        f"unknown weights {name!r}{hint} (`mnasnet weights` lists them; a checkpoint path works too)"
    )


# -- the published checkpoints ------------------------------------------------------------

_TORCHVISION_HASH = "torch.hub: sha256 prefix in the file name (torchvision checks it with check_hash=True)"
_TIMM_HASH = "sha256 prefix in the file name (timm's release convention, as torch.hub checks it)"
_GOOGLE_HASH = "none published: Google gives no checksum; every tensor's name and shape is checked on conversion"

# torchvision: ImageClassification(crop_size=224[, resize_size=232]), bilinear, PIL path.
_TORCHVISION_256 = Preprocess(resolution=224, resize=256, crop_pct=224 / 256, interpolation="bilinear")
_TORCHVISION_232 = Preprocess(resolution=224, resize=232, crop_pct=224 / 232, interpolation="bilinear")
# timm: default_cfgs crop_pct 0.875, bicubic -> Resize(floor(224 / 0.875) = 256), CenterCrop(224).
_TIMM = Preprocess(resolution=224, resize=256, crop_pct=0.875, interpolation="bicubic")
# Google: preprocessing.py _decode_and_center_crop, then the legacy bilinear resize.
_GOOGLE = Preprocess.reference(224)

_TV_RELEASES = "https://download.pytorch.org/models/"
_TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_GOOGLE_BUCKET = "https://storage.googleapis.com/cloud-tpu-checkpoints/mnasnet/"
_GOOGLE_LEGACY_BUCKET = "https://storage.googleapis.com/mnasnet/checkpoints/"

for _entry in (
    Weights(
        name="b1_050.torchvision_in1k",
        url=_TV_RELEASES + "mnasnet0.5_top1_67.823-3ffadce67e.pth",
        sha256="3ffadce67e",
        hash_source=_TORCHVISION_HASH,
        arch="b1",
        width_multiplier=0.5,
        source="torchvision",
        preprocess=_TORCHVISION_256,
        top1=67.734,
        top5=87.490,
        num_params=2_218_512,
        license="BSD-3-Clause (torchvision)",
        publisher_name="mnasnet0_5",
        aliases=("MNASNet0_5_Weights.IMAGENET1K_V1",),
    ),
    Weights(
        name="b1_075.torchvision_in1k",
        url=_TV_RELEASES + "mnasnet0_75-7090bc5f.pth",
        sha256="7090bc5f",
        hash_source=_TORCHVISION_HASH,
        arch="b1",
        width_multiplier=0.75,
        source="torchvision",
        preprocess=_TORCHVISION_232,
        top1=71.180,
        top5=90.496,
        num_params=3_170_208,
        license="BSD-3-Clause (torchvision)",
        publisher_name="mnasnet0_75",
        aliases=("MNASNet0_75_Weights.IMAGENET1K_V1",),
    ),
    Weights(
        name="b1_100.torchvision_in1k",
        url=_TV_RELEASES + "mnasnet1.0_top1_73.512-f206786ef8.pth",
        sha256="f206786ef8",
        hash_source=_TORCHVISION_HASH,
        arch="b1",
        width_multiplier=1.0,
        source="torchvision",
        preprocess=_TORCHVISION_256,
        top1=73.456,
        top5=91.510,
        num_params=4_383_312,
        license="BSD-3-Clause (torchvision)",
        publisher_name="mnasnet1_0",
        aliases=("MNASNet1_0_Weights.IMAGENET1K_V1",),
    ),
    Weights(
        name="b1_130.torchvision_in1k",
        url=_TV_RELEASES + "mnasnet1_3-a4c69d6f.pth",
        sha256="a4c69d6f",
        hash_source=_TORCHVISION_HASH,
        arch="b1",
        width_multiplier=1.3,
        source="torchvision",
        preprocess=_TORCHVISION_232,
        top1=76.506,
        top5=93.522,
        num_params=6_282_256,
        license="BSD-3-Clause (torchvision)",
        publisher_name="mnasnet1_3",
        aliases=("MNASNet1_3_Weights.IMAGENET1K_V1",),
    ),
    Weights(
        name="b1_100.timm_rmsp_in1k",
        url=_TIMM_RELEASES + "mnasnet_b1-74cb7081.pth",
        sha256="74cb7081",
        hash_source=_TIMM_HASH,
        arch="b1",
        width_multiplier=1.0,
        source="timm",
        preprocess=_TIMM,
        top1=74.672,
        top5=92.108,
        num_params=4_383_312,
        license="Apache-2.0 (timm)",
        publisher_name="mnasnet_100.rmsp_in1k",
        aliases=("mnasnet_100",),
        notes="timm also serves these weights as hf-hub:timm/mnasnet_100.rmsp_in1k (model.safetensors)",
    ),
    Weights(
        name="a1_100.timm_rmsp_in1k",
        url=_TIMM_RELEASES + "mnasnet_a1-d9418771.pth",
        sha256="d9418771",
        hash_source=_TIMM_HASH,
        arch="a1",
        width_multiplier=1.0,
        source="timm",
        preprocess=_TIMM,
        top1=75.452,
        top5=92.608,
        num_params=3_887_038,
        license="Apache-2.0 (timm)",
        publisher_name="semnasnet_100.rmsp_in1k",
        aliases=("semnasnet_100",),
        notes="timm also serves these weights as hf-hub:timm/semnasnet_100.rmsp_in1k (model.safetensors)",
    ),
    Weights(
        name="a1_075.timm_rmsp_in1k",
        url=_TIMM_RELEASES + "semnasnet_075-18710866.pth",
        sha256="18710866",
        hash_source=_TIMM_HASH,
        arch="a1",
        width_multiplier=0.75,
        source="timm",
        preprocess=_TIMM,
        top1=73.000,
        top5=91.124,
        num_params=2_912_278,
        license="Apache-2.0 (timm)",
        publisher_name="semnasnet_075.rmsp_in1k",
        aliases=("semnasnet_075",),
        notes="timm also serves these weights as hf-hub:timm/semnasnet_075.rmsp_in1k (model.safetensors)",
    ),
    Weights(
        name="small_100.timm_lamb_in1k",
        url=_TIMM_RELEASES + "mnasnet_small_lamb-aff75073.pth",
        sha256="aff75073",
        hash_source=_TIMM_HASH,
        arch="small",
        width_multiplier=1.0,
        source="timm",
        preprocess=_TIMM,
        top1=66.204,
        top5=86.470,
        num_params=2_030_264,
        license="Apache-2.0 (timm)",
        publisher_name="mnasnet_small.lamb_in1k",
        aliases=("mnasnet_small",),
        notes="timm also serves these weights as hf-hub:timm/mnasnet_small.lamb_in1k (model.safetensors)",
    ),
    Weights(
        name="a1_100.google_in1k",
        url=_GOOGLE_BUCKET + "mnasnet-a1.tgz",
        sha256=None,
        hash_source=_GOOGLE_HASH,
        arch="a1",
        width_multiplier=1.0,
        source="tf",
        preprocess=_GOOGLE,
        top1=75.2,
        top5=92.5,
        num_params=3_887_038,
        license="Apache-2.0 (tensorflow/tpu)",
        publisher_name="mnasnet-a1",
        mirrors=(_GOOGLE_LEGACY_BUCKET + "mnasnet-a1.tar.gz",),
        notes="URL from tensorflow/tpu mnasnet_example.ipynb; the legacy tar.gz link broke in 2020 (tpu#832)",
    ),
    Weights(
        name="b1_100.google_in1k",
        url=_GOOGLE_BUCKET + "mnasnet-b1.tgz",
        sha256=None,
        hash_source=_GOOGLE_HASH,
        arch="b1",
        width_multiplier=1.0,
        source="tf",
        preprocess=_GOOGLE,
        top1=74.0,
        top5=None,
        num_params=4_383_312,
        license="Apache-2.0 (tensorflow/tpu)",
        publisher_name="mnasnet-b1",
        mirrors=(_GOOGLE_LEGACY_BUCKET + "mnasnet-b1.tar.gz",),
        notes=(
            "URL follows the bucket's naming for mnasnet-a1; not confirmed by a published link. "
            "Top-1 as reported for B1 in the tensorflow/tpu MnasNet README; no top-5 published"
        ),
    ),
):
    register_weights(_entry)
del _entry
