"""Where the files shipped with the package live: `proto/` (summarizer.proto) and `configs/`.

In a checkout (and an editable install) they are the top-level folders beside `pegasus_gsg/`;
an installed wheel carries them inside the package as `pegasus_gsg/proto/` and
`pegasus_gsg/configs/` (pyproject.toml maps the folders). Both layouts are looked up, in that
order: the installed copy, then the checkout.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(folder: str) -> Path:
    """The directory `folder` ("proto" or "configs"); FileNotFoundError names where it looked."""
    candidates = [_PACKAGE / folder, _PACKAGE.parent / folder]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{folder}/ not found at {' or '.join(str(c) for c in candidates)}: "
        "the installation is incomplete (reinstall pegasus-gsg)"
    )


def shipped_config(name: str) -> Path:
    """Path of a shipped config, e.g. shipped_config("tiny.yaml")."""
    path = shipped_dir("configs") / name
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {name} in {path.parent}")
    return path
