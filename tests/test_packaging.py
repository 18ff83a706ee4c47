"""The distribution is pegasus_gsg and nothing else, and pyproject.toml lists every package.

setuptools is given an explicit package list (server/, proto/ and configs/ install under
pegasus_gsg/ through package-dir), so a new package folder that is not listed would be missing
from the wheel while every test in the checkout still passes. scripts/wheel_smoke.sh (run by CI)
builds and installs the wheel itself; this test catches the omission in the fast loop.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    mapped = {name: REPO / folder for name, folder in _setuptools()["package-dir"].items()}
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "pegasus_gsg").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    for name, folder in mapped.items():
        assert folder.is_dir(), f"package-dir maps {name} to missing {folder}"
        found.add(name)
        found |= {
            name + "." + ".".join(init.parent.relative_to(folder).parts)
            for init in folder.rglob("__init__.py")
            if init.parent != folder
        }
    assert listed == found, (
        f"pyproject [tool.setuptools] packages differ from the package folders: "
        f"unlisted {sorted(found - listed)}, listed but absent {sorted(listed - found)}"
    )


def test_no_generic_top_level_name() -> None:
    assert {name.split(".")[0] for name in _setuptools()["packages"]} == {"pegasus_gsg"}


def test_shipped_files_are_found() -> None:
    from pegasus_gsg.serving.protos import proto_dir
    from pegasus_gsg.shipped import shipped_config

    assert (proto_dir() / "summarizer.proto").is_file()
    assert shipped_config("tiny.yaml").read_text(encoding="utf-8").strip()
