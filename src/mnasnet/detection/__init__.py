"""Object-detection building blocks in pure PyTorch: anchors, box coding, matching, losses and NMS.

Each piece follows torchvision's detection code (``models/detection/ssd.py``, ``retinanet.py``,
``anchor_utils.py``, ``_utils.py``, ``ops/boxes.py``) number for number, without its compiled ops.
The detectors built from them, SSDLite and RetinaNet-FPN on any MnasNet backbone, live in
``mnasnet.detection.model`` (``create_detector``, ``save_detector``, ``load_detector``).
Import the pieces from their modules (``mnasnet.detection.anchors`` ...); this package stays light.
"""

from mnasnet.errors import MnasNetError


class DetectionError(MnasNetError, ValueError):
    """Detection inputs or settings that cannot work (shapes, thresholds, anchor settings)."""


__all__ = ["DetectionError"]
