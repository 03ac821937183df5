"""torchvision and timm as test oracles.

The torchvision wheel is a CUDA build; on a CPU-only torch it imports only once
its missing C++ ops are declared. timm imports torchvision, so it needs the same.
"""

from __future__ import annotations

import torch

_declared = False


def _declare_torchvision_ops() -> None:
    global _declared
    if _declared:
        return
    try:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define(
            "qnms(Tensor qdets, Tensor qscores, Tensor dets_scale, Tensor dets_zero_point, "
            "Tensor scores_scale, Tensor scores_zero_point, float iou_threshold) -> Tensor"
        )
        _declare_torchvision_ops.library = library  # keep the registration alive
    except RuntimeError:
        pass  # already declared in this process
    _declared = True


def import_torchvision():
    _declare_torchvision_ops()
    import torchvision

    return torchvision


def import_timm():
    _declare_torchvision_ops()
    import timm

    return timm
