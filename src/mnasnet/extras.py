"""Optional packages, and errors that say which ``pip install 'mnasnet[EXTRA]'`` brings them.

Every import of an optional package goes through :func:`require`, so a missing
one is reported as one line naming the extra, never as a bare ``ModuleNotFoundError``::

    onnx = require("onnx")
    # MissingDependencyError: onnx is not installed: pip install 'mnasnet[deploy]'
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType

from mnasnet.errors import MissingDependencyError

__all__ = ["OPTIONAL_PACKAGES", "check_installed", "missing_packages", "require"]

# import name -> (the distribution pip installs, the mnasnet extra that lists it)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "deploy"),
    "onnxruntime": ("onnxruntime", "deploy"),
    "onnxscript": ("onnxscript", "deploy"),
    "ai_edge_litert": ("ai-edge-litert", "deploy"),
    "litert_torch": ("litert-torch", "deploy"),
    "torchao": ("torchao", "deploy"),  # litert-torch's int8 quantiser
    "ethosu": ("ethos-u-vela", "deploy"),
    "matplotlib": ("matplotlib", "train"),
    "tensorboard": ("tensorboard", "train"),
    "sklearn": ("scikit-learn", "train"),
    "pycocotools": ("pycocotools", "detection"),
    "skimage": ("scikit-image", "detection"),
    "ray": ("ray", "search"),
}


def _package(module: str, extra: str | None) -> tuple[str, str]:
    top = module.split(".")[0]
    distribution, default_extra = OPTIONAL_PACKAGES.get(top, (top, None))
    extra = extra or default_extra
    if extra is None:
        raise KeyError(f"{top} is not a known optional package; name its extra")  # a programming error
    return distribution, extra


def require(module: str, *, extra: str | None = None) -> ModuleType:
    """Imports ``module`` (e.g. ``"onnx"`` or ``"ai_edge_litert.interpreter"``) and returns it.

    Args:
        extra: the mnasnet extra that installs it; default: from :data:`OPTIONAL_PACKAGES`.

    Raises:
        MissingDependencyError: the package (or that part of it) is not installed; the message
            names the pip command that installs it.
    """
    distribution, extra = _package(module, extra)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        if error.name is None or error.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is broken: show the real error
        install = f"pip install 'mnasnet[{extra}]'"
        if module != top and _importable(top):
            raise MissingDependencyError(
                f"the installed {distribution} has no {module} (another version?): {install} installs the tested one"
            ) from None
        raise MissingDependencyError(f"{distribution} is not installed: {install}") from None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a None entry in sys.modules
        return False


def missing_packages(modules: Iterable[str]) -> list[str]:
    """The import names among ``modules`` that are not installed (found without importing them)."""
    return [module for module in modules if not _importable(module)]


def check_installed(modules: Iterable[str], *, purpose: str) -> None:
    """Raises one :class:`MissingDependencyError` listing every package of ``modules`` that is missing.

    Args:
        purpose: what needs them, for the message (e.g. ``"mnasnet demo"``).
    """
    missing = missing_packages(modules)
    if not missing:
        return
    packages = [_package(module, None) for module in missing]
    extras = ",".join(sorted({extra for _, extra in packages}))
    names = ", ".join(distribution for distribution, _ in packages)
    verb, pronoun = ("is", "it") if len(packages) == 1 else ("are", "them")
    raise MissingDependencyError(
        f"{names} {verb} not installed: pip install 'mnasnet[{extras}]' ({purpose} needs {pronoun})"
    )
