"""Pascal VOC annotations (one XML file per image) read into a :class:`DetectionData`.

Either a VOC folder (``Annotations/*.xml`` beside ``JPEGImages/``; with ``split``, the ids
listed in ``ImageSets/Main/<split>.txt``) or a list of XML files, whose images are looked
up in ``image_dir`` (default: ``JPEGImages`` beside each file's folder).

VOC boxes are 1-based inclusive pixel indices; they become continuous coordinates
``[xmin - 1, ymin - 1, xmax, ymax]`` (the box covering pixels ``xmin..xmax``). Objects
marked ``difficult`` are left out unless ``include_difficult`` (VOC's evaluation ignores
them); they are not errors. Category ids are ``1..K`` in the order of ``classes``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

from mnasnet import limits
from mnasnet.detection.data import records as r
from mnasnet.errors import DataError

__all__ = ["VOC_CLASSES", "load_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def load_voc(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = None,
    classes: Sequence[str] = VOC_CLASSES,
    image_dir: str | os.PathLike | None = None,
    include_difficult: bool = False,
    strict: bool = False,
    check_image_sizes: bool = True,
    max_files: int = r.MAX_IMAGES,
) -> r.DetectionData:
    """Reads VOC XML annotations.

    Args:
        source: a VOC folder (holding ``Annotations/``) or a list of XML files.
        split: with a folder, read only the ids in ``ImageSets/Main/<split>.txt``.
        classes: the class names; an object of any other name is an unknown category.
        image_dir: where the images are; default ``JPEGImages`` beside the XML files' folder.
        include_difficult: keep objects marked difficult.
        strict: raise at the first bad annotation or image instead of skipping it.
        check_image_sizes: compare each image file's size with the XML's ``<size>``.
        max_files: refuse more XML files than this before reading any.

    Raises:
        DataError: no such folder or files, too many files, no usable image, or (``strict``) any bad entry.
    """
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"VOC classes must be distinct and non-empty, got {list(classes)}")
    files, source_name = _xml_files(source, split, max_files)
    audit = r.Audit(source_name, strict=strict)
    category_of = {name: index for index, name in enumerate(classes, start=1)}
    records: list[r.DetectionRecord] = []
    seen: set[Path] = set()
    for xml_path in files:
        folder = Path(image_dir) if image_dir is not None else xml_path.parent.parent / "JPEGImages"
        record = _read_one(xml_path, len(records), folder, category_of, include_difficult, audit, check_image_sizes)
        if record is None:
            continue
        if record.path in seen:
            audit.image(r.DUPLICATE_IMAGE, f"{xml_path.name}: {record.path.name} already annotated")
            continue
        seen.add(record.path)
        records.append(record)
    report = audit.finish()
    if not records:
        raise DataError(f"{source_name}: no usable images")
    return r.DetectionData(
        records=records, categories=dict(enumerate(classes, start=1)), source=source_name, report=report
    )


def _xml_files(source, split: str | None, max_files: int) -> tuple[list[Path], str]:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        annotations = root / "Annotations"
        if not annotations.is_dir():
            raise DataError(f"{root} is not a VOC folder (no Annotations/ folder)")
        if split is not None:
            listing = root / "ImageSets" / "Main" / f"{split}.txt"
            r.check_file_size(listing, r.MAX_XML_BYTES * 16, "split list")
            ids = listing.read_text(errors="replace").split()
            files = [r.image_path(annotations, f"{name}.xml") for name in ids]
            if None in files:
                outside = ids[files.index(None)]
                raise DataError(f"{listing}: id {outside!r} names a file outside {annotations}")
        else:
            files = sorted(annotations.glob("*.xml"))
        name = f"{root.name}/{split}" if split else root.name
    else:
        files, name = [Path(p) for p in source], "VOC annotation list"
    if not files:
        raise DataError(f"{name}: no XML annotation files")
    if len(files) > max_files:
        raise DataError(f"{name} has {len(files):,} annotation files; the limit is {max_files:,}")
    return files, name


def _read_one(
    xml_path: Path,
    image_id: int,
    image_dir: Path,
    category_of: dict[str, int],
    include_difficult: bool,
    audit: r.Audit,
    check_sizes: bool,
) -> r.DetectionRecord | None:
    where = xml_path.name
    root = _parse(xml_path, audit)
    if root is None:
        return None
    filename = (root.findtext("filename") or "").strip()
    width, height = _int(root.findtext("size/width")), _int(root.findtext("size/height"))
    if not filename or width is None or height is None or width <= 0 or height <= 0:
        audit.image(r.BAD_IMAGE, f"{where}: needs <filename> and a positive <size> width and height")
        return None
    if width * height > limits.MAX_IMAGE_PIXELS:
        audit.image(r.BAD_IMAGE, f"{where}: {width}x{height} is over {limits.MAX_IMAGE_PIXELS:,} pixels")
        return None
    path = r.image_path(image_dir, filename)
    if path is None:
        audit.image(r.OUTSIDE_FOLDER, f"{where}: <filename> {filename!r} (give a name inside {image_dir})")
        return None
    if not r.check_image_file(path, width, height, audit, where, check_size=check_sizes):
        return None
    boxes, category_ids = [], []
    for index, element in enumerate(root.iter("object")):
        found = _read_object(element, f"{where} object {index}", width, height, category_of, include_difficult, audit)
        if found is not None:
            boxes.append(found[0])
            category_ids.append(found[1])
    if len(boxes) > r.MAX_BOXES_PER_IMAGE:
        audit.image(r.TOO_MANY_BOXES, f"{where}: {len(boxes):,} boxes")
        return None
    return r.make_record(image_id, path, width, height, boxes, category_ids)


def _parse(xml_path: Path, audit: r.Audit) -> ElementTree.Element | None:
    if not xml_path.is_file():
        audit.image(r.MISSING_FILE, f"{xml_path}")
        return None
    size = xml_path.stat().st_size
    if size > r.MAX_XML_BYTES:
        audit.image(r.MALFORMED_XML, f"{xml_path.name}: {size:,} bytes (limit {r.MAX_XML_BYTES:,})")
        return None
    data = xml_path.read_bytes()
    if b"<!ENTITY" in data or b"<!DOCTYPE" in data:  # VOC never uses them; entity expansion is a memory bomb
        audit.image(r.MALFORMED_XML, f"{xml_path.name}: DOCTYPE or ENTITY declarations are not accepted")
        return None
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        audit.image(r.MALFORMED_XML, f"{xml_path.name}: {error}")
        return None
    if root.tag != "annotation":
        audit.image(r.MALFORMED_XML, f"{xml_path.name}: root element <{root.tag}>, expected <annotation>")
        return None
    return root


def _read_object(element, where, width, height, category_of, include_difficult, audit):
    name = (element.findtext("name") or "").strip()
    corners = [_float(element.findtext(f"bndbox/{key}")) for key in ("xmin", "ymin", "xmax", "ymax")]
    if not name or any(value is None for value in corners):
        audit.annotation(r.BAD_ANNOTATION, f"{where}: needs <name> and numeric <bndbox> xmin, ymin, xmax, ymax")
        return None
    if name not in category_of:
        audit.annotation(r.UNKNOWN_CATEGORY, f"{where}: {name!r}")
        return None
    if _int(element.findtext("difficult")) == 1 and not include_difficult:
        return None
    xmin, ymin, xmax, ymax = corners
    box = r.check_box((xmin - 1.0, ymin - 1.0, xmax, ymax), width, height, audit, f"{where}: {corners}")
    return None if box is None else (box, category_of[name])


def _float(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _int(text: str | None) -> int | None:
    value = _float(text)
    return int(value) if value is not None and value.is_integer() else None
