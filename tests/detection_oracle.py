"""torchvision's detection code (SSD, RetinaNet, anchors, box coder, matchers) as a test oracle.

torchvision's compiled ops do not load on our CPU-only torch (see oracles.py, which declares them).
Its Python detection code only needs ``torchvision::nms``; here it gets a CPU kernel written in
Python after torchvision's C++ one (``csrc/ops/cpu/nms_kernel.cpp``): greedy over the scores,
best first, suppressing boxes whose IoU with a kept box is above the threshold. It shares no code
with ``mnasnet.detection.postprocess`` (which works on a table of all pairs at once).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch

from oracles import import_torchvision

_kernels = {}  # keeps the kernel registration alive; filled once per process


def nms_kernel(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's NMS kernel, step for step.

    Ties in score keep input order (a stable sort). The IoU is compared with the threshold in the
    boxes' precision, as the CUDA kernel does (the C++ CPU kernel compares in double: the two differ
    only when a float32 IoU rounds exactly onto the threshold).
    """
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(descending=True, stable=True)[1]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for position, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        later = order[position + 1 :]
        width = (torch.minimum(x2[i], x2[later]) - torch.maximum(x1[i], x1[later])).clamp(min=0)
        height = (torch.minimum(y2[i], y2[later]) - torch.maximum(y1[i], y1[later])).clamp(min=0)
        inter = width * height
        overlap = inter / (areas[i] + areas[later] - inter)
        suppressed[later[overlap > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.int64)


def import_torchvision_detection():
    """torchvision, with a CPU kernel for ``torchvision::nms`` registered once per process."""
    torchvision = import_torchvision()
    if not _kernels:
        library = torch.library.Library("torchvision", "IMPL")
        library.impl("nms", nms_kernel, "CPU")
        _kernels["nms"] = library
    return torchvision


@contextlib.contextmanager
def torchvision_ops():
    """Lets torchvision call its ops (it checks that its C++ library loaded before each call)."""
    import_torchvision_detection()
    import torchvision.extension

    saved = torchvision.extension._has_ops
    torchvision.extension._has_ops = lambda: True
    try:
        yield
    finally:
        torchvision.extension._has_ops = saved


class _NoBackbone(torch.nn.Module):
    out_channels = 8

    def forward(self, images):
        return OrderedDict()


def torchvision_ssd(num_classes: int, size: tuple[int, int], anchor_generator, **settings):
    """An SSD whose loss and post-processing are torchvision's; backbone and head are never run."""
    import_torchvision_detection()
    from torchvision.models.detection.ssd import SSD

    return SSD(_NoBackbone(), anchor_generator, size, num_classes, head=torch.nn.Identity(), **settings)


def torchvision_retinanet(num_classes: int, anchor_generator=None, **settings):
    """A RetinaNet whose matcher, loss and post-processing are torchvision's; the backbone is never run."""
    import_torchvision_detection()
    from torchvision.models.detection.retinanet import RetinaNet

    return RetinaNet(_NoBackbone(), num_classes, anchor_generator=anchor_generator, **settings)
