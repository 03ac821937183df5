"""COCO-format annotation files (``instances_*.json``) read into a :class:`DetectionData`.

The file is a dict with ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``
pixels, optional ``iscrowd``) and ``categories`` (``id``, ``name``). Image paths are
relative to the JSON file's folder unless ``image_root`` is given.

Crowd regions (``iscrowd: 1``) are left out of the boxes, as torchvision's COCO reference
does; they are not errors. The category list is small and everything depends on it, so a
malformed or duplicated category is a :class:`~mnasnet.errors.DataError` even when not
strict. Every other bad entry is counted and skipped (see :mod:`.records`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from mnasnet import limits
from mnasnet.detection.data import records as r
from mnasnet.errors import DataError

__all__ = ["load_coco"]


def load_coco(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    strict: bool = False,
    check_image_sizes: bool = True,
    max_bytes: int = r.MAX_FILE_BYTES,
    max_images: int = r.MAX_IMAGES,
    max_annotations: int = r.MAX_ANNOTATIONS,
) -> r.DetectionData:
    """Reads a COCO annotation file.

    Args:
        path: the JSON file.
        image_root: the folder ``file_name`` is relative to; default: the JSON's folder.
        strict: raise at the first bad annotation or image instead of skipping it.
        check_image_sizes: open each image's header to compare its size with the declared one
            (one file open per image; turn off for speed on a dataset you trust).
        max_bytes, max_images, max_annotations: refuse larger inputs before reading them whole.

    Raises:
        DataError: the file is missing, too large, not JSON, not a COCO dict, has no images or
            malformed categories, or (``strict``) holds any bad entry.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    document = _read_json(path, max_bytes)
    source = path.name
    images, annotations, categories = _sections(document, source, max_images, max_annotations)
    audit = r.Audit(source, strict=strict)
    entries, declared = _image_entries(images, root, audit, check_image_sizes)
    boxes = _annotation_boxes(annotations, entries, declared, categories, audit)
    records = []
    for image_id, (file_path, width, height) in entries.items():
        found = boxes.get(image_id, [])
        if len(found) > r.MAX_BOXES_PER_IMAGE:
            audit.image(r.TOO_MANY_BOXES, f"image {image_id}: {len(found):,} boxes (limit {r.MAX_BOXES_PER_IMAGE:,})")
            continue
        records.append(r.make_record(image_id, file_path, width, height, [b for b, _ in found], [c for _, c in found]))
    report = audit.finish()
    if not records:
        why = report.summary(source).split(": ", 1)[1] if report.total else ""
        raise DataError(f"{path}: no usable images" + (f" ({why})" if why else ""))
    return r.DetectionData(records=records, categories=categories, source=str(path), report=report)


def _read_json(path: Path, max_bytes: int) -> Any:
    r.check_file_size(path, max_bytes, "annotation file")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits
        raise DataError(f"{path} is not valid JSON: {error}") from None
    except MemoryError:
        raise DataError(f"{path} is too large to parse in memory") from None


def _sections(document: Any, source: str, max_images: int, max_annotations: int) -> tuple[list, list, dict[int, str]]:
    if not isinstance(document, dict) or "images" not in document:
        raise DataError(f"{source} is not a COCO annotation file (expected a JSON object with images, categories)")
    images = document["images"]
    annotations = document.get("annotations", [])  # image-info files (test-dev) have none
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(f"{source}: 'images' and 'annotations' must be lists")
    if not images:
        raise DataError(f"{source} has no images")
    if len(images) > max_images:
        raise DataError(f"{source} has {len(images):,} images; the limit is {max_images:,}")
    if len(annotations) > max_annotations:
        raise DataError(f"{source} has {len(annotations):,} annotations; the limit is {max_annotations:,}")
    return images, annotations, _categories(document.get("categories"), source)


def _categories(entries: Any, source: str) -> dict[int, str]:
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: 'categories' must be a non-empty list of {{id, name}}")
    if len(entries) > r.MAX_CATEGORIES:
        raise DataError(f"{source} has {len(entries):,} categories; the limit is {r.MAX_CATEGORIES:,}")
    categories: dict[int, str] = {}
    for index, entry in enumerate(entries):
        category_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(category_id, int) and not isinstance(category_id, bool) and not _is_int(category_id):
            raise DataError(f"{source}: categories[{index}]: its id does not fit in 64 bits")
        if not (isinstance(entry, dict) and _is_int(category_id) and isinstance(entry.get("name"), str)):
            raise DataError(f"{source}: categories[{index}] is not an object with an integer id and a name")
        if entry["id"] in categories:
            raise DataError(f"{source}: category id {entry['id']} appears twice")
        categories[entry["id"]] = entry["name"]
    return categories


def _is_int(value: Any) -> bool:
    return r.is_id(value)


def _image_entries(
    images: list, root: Path, audit: r.Audit, check_sizes: bool
) -> tuple[dict[int, tuple[Path, int, int]], set[int]]:
    """id -> (path, width, height) of every well-formed image entry with a matching file; all ids declared."""
    entries: dict[int, tuple[Path, int, int]] = {}
    declared: set[int] = set()
    for index, entry in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            audit.image(r.BAD_IMAGE, f"{where}: not an object with an integer id")
            continue
        image_id, where = entry["id"], f"image {entry['id']}"
        if image_id in declared:
            audit.image(r.DUPLICATE_IMAGE, where)
            continue
        declared.add(image_id)
        width, height, name = entry.get("width"), entry.get("height"), entry.get("file_name")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0 and isinstance(name, str) and name):
            audit.image(r.BAD_IMAGE, f"{where}: needs file_name and positive integer width and height")
            continue
        if width * height > limits.MAX_IMAGE_PIXELS:
            audit.image(r.BAD_IMAGE, f"{where}: {width}x{height} is over {limits.MAX_IMAGE_PIXELS:,} pixels")
            continue
        file_path = r.image_path(root, name)
        if file_path is None:
            audit.image(r.OUTSIDE_FOLDER, f"{where}: file_name {name!r} (give a path relative to {root})")
            continue
        if r.check_image_file(file_path, width, height, audit, where, check_size=check_sizes):
            entries[image_id] = (file_path, width, height)
    return entries, declared


def _annotation_boxes(
    annotations: list,
    entries: dict[int, tuple[Path, int, int]],
    declared: set[int],
    categories: dict[int, str],
    audit: r.Audit,
) -> dict[int, list[tuple[tuple[float, ...], int]]]:
    """The usable boxes by image. Annotations of images that were skipped go with them, uncounted."""
    boxes: dict[int, list[tuple[tuple[float, ...], int]]] = defaultdict(list)
    seen: set[int] = set()
    for index, entry in enumerate(annotations):
        parsed = _parse_annotation(entry, index, audit)
        if parsed is None:
            continue
        annotation_id, image_id, category_id, bbox, crowd = parsed
        where = f"annotation {annotation_id} (image {image_id})"
        if annotation_id in seen:
            audit.annotation(r.DUPLICATE_ANNOTATION, where)
            continue
        seen.add(annotation_id)
        if image_id not in declared:
            audit.annotation(r.UNKNOWN_IMAGE, where)
            continue
        if image_id not in entries or crowd:
            continue  # its image was skipped (counted there), or a crowd region
        if category_id not in categories:
            audit.annotation(r.UNKNOWN_CATEGORY, f"{where}: category {category_id}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        _, width, height = entries[image_id]
        box = r.check_box((x, y, x + w, y + h), width, height, audit, f"{where}: bbox {bbox}")
        if box is not None:
            boxes[image_id].append((box, category_id))
    return boxes


def _parse_annotation(entry: Any, index: int, audit: r.Audit) -> tuple[int, int, int, list, bool] | None:
    if not isinstance(entry, dict):
        audit.annotation(r.BAD_ANNOTATION, f"annotations[{index}]: not an object")
        return None
    missing = [key for key in ("id", "image_id", "category_id") if not _is_int(entry.get(key))]
    bbox = entry.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(r.is_number(v) for v in bbox)):
        missing.append("bbox")
    crowd = entry.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        missing.append("iscrowd")
    if missing:
        name = f"annotation {entry['id']}" if _is_int(entry.get("id")) else f"annotations[{index}]"
        audit.annotation(r.BAD_ANNOTATION, f"{name}: missing or wrong-typed {', '.join(missing)}")
        return None
    return entry["id"], entry["image_id"], entry["category_id"], bbox, bool(crowd)
