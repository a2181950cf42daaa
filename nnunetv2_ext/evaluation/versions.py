"""Versions of the software that produced a report (recorded in every evaluation and comparison report)."""
import platform
from importlib import metadata
from typing import Dict


def software_versions() -> Dict[str, str]:
    """nnunetv2_ext, nnunetv2, torch and python versions ("not installed" where a package is missing)."""
    versions = {}
    for package in ("nnunetv2_ext", "nnunetv2", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = platform.python_version()
    return versions
