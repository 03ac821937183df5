"""Download, verify, convert once, and cache published weights.

Cache layout (``cache_dir()``)::

    downloads/<publisher's file name>     the file as published, hash-checked
    converted/<registry name>.safetensors our checkpoint, with preprocessing and labels

Every file is written under a temporary name and renamed when complete, so an
interrupted download or a hash mismatch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mnasnet.errors import CheckpointError, MnasNetError
from mnasnet.fileio import atomic_path, cache_dir, writable_cache_dir
from mnasnet.weights.registry import Weights

__all__ = [
    "DownloadError",
    "HashMismatchError",
    "cache_dir",
    "convert_to_cache",
    "converted_path",
    "download_file",
    "fetch_weights_file",
]

_CHUNK = 1 << 16


class DownloadError(MnasNetError):
    """A file could not be downloaded or failed its hash check."""


class HashMismatchError(DownloadError):
    """A file's SHA-256 differs from the one its publisher gives."""


def download_file(
    url: str, destination: str | os.PathLike, *, sha256: str | None = None, progress: bool = True, timeout: float = 30
) -> str:
    """Downloads ``url`` to ``destination`` atomically and checks its SHA-256.

    Args:
        sha256: the expected hex digest, or a prefix of it; ``None`` skips the check.
        progress: show a tqdm bar on stderr.

    Returns:
        The file's full SHA-256 hex digest.

    Raises:
        DownloadError: network or HTTP failure, a short transfer, or a hash mismatch.
            No file is left at ``destination`` (or beside it).
    """
    destination = Path(destination)
    digest = hashlib.sha256()
    try:
        with atomic_path(destination) as temp, urllib.request.urlopen(url, timeout=timeout) as response:
            expected_size = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with (
                open(temp, "wb") as handle,
                tqdm(
                    total=expected_size,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=destination.name,
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected_size is not None and received != expected_size:
                raise DownloadError(f"download of {url} stopped after {received} of {expected_size} bytes")
            actual = digest.hexdigest()
            if sha256 is not None and not actual.startswith(sha256.lower()):
                raise HashMismatchError(
                    f"{url} has sha256 {actual}, but its publisher gives {sha256}; the download was discarded"
                )
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except http.client.IncompleteRead as error:
        raise DownloadError(f"download of {url} was interrupted after {len(error.partial)} bytes") from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url}: {reason}") from None
    return actual


def verify_file(path: Path, sha256: str | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    if sha256 is not None and not actual.startswith(sha256.lower()):
        raise HashMismatchError(f"{path} has sha256 {actual}, but its publisher gives {sha256}")
    return actual


def fetch_weights_file(weights: Weights, *, progress: bool = True) -> tuple[Path, str]:
    """The publisher's file for ``weights`` in the cache, downloaded if missing; returns (path, sha256)."""
    path = cache_dir() / "downloads" / weights.file_name
    if path.is_file():  # downloaded earlier, or put there by hand
        try:
            return path, verify_file(path, weights.sha256)
        except HashMismatchError as error:
            # never use it: a truncated or foreign file; fetch the published one instead
            print(f"warning: {error}; removing it and downloading again", file=sys.stderr)
            path.unlink()
    writable_cache_dir("downloads")  # an unwritable cache is named as such, not as a failed download
    failures = []
    for url in weights.urls:
        try:
            return path, download_file(url, path, sha256=weights.sha256, progress=progress)
        except HashMismatchError:
            raise  # the file was served but is not the published one; a mirror will not help
        except DownloadError as error:
            failures.append(str(error))
    raise DownloadError(
        f"{'; '.join(failures)}. Without network access, download {weights.url} yourself "
        f"and put it at {path} (or pass the path of a converted .safetensors checkpoint instead of a name)"
    )


def converted_path(weights: Weights) -> Path:
    """Where the cache keeps ``weights`` converted to our checkpoint format."""
    return cache_dir() / "converted" / f"{weights.name}.safetensors"


def convert_to_cache(weights: Weights, source_path: Path, source_sha256: str) -> Path:
    """Converts the publisher's file into our checkpoint format in the cache; returns its path."""
    from mnasnet.checkpoint import save_checkpoint
    from mnasnet.data.labels import imagenet_labels
    from mnasnet.weights.convert import convert_file

    model = convert_file(source_path, weights.source, arch=weights.arch, width_multiplier=weights.width_multiplier)
    labels = imagenet_labels() if weights.labels == "imagenet-1k" else None
    if labels and model.config.num_classes == len(labels) + 1:  # TF checkpoints with a background class 0
        labels = ["background", *labels]
    if labels and model.config.num_classes != len(labels):
        raise CheckpointError(
            f"{source_path} has {model.config.num_classes} classes, but {weights.name} should have {len(labels)}"
        )
    extra = {
        "weights": weights.name,
        "publisher_name": weights.publisher_name,
        "source": weights.source,
        "source_url": weights.url,
        "source_sha256": source_sha256,
        "license": weights.license,
    }
    writable_cache_dir("converted")
    return save_checkpoint(model, converted_path(weights), preprocess=weights.preprocess, labels=labels, extra=extra)
