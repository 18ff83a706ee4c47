"""Every field of every config dataclass has an attribute docstring (STYLE.md habit 2).

An attribute docstring is the string literal right after the field (as litgpt writes them):

    max_tokens: int = 4096
    \"\"\"Padded input tokens per micro-batch per process (the bucketing sampler's budget).\"\"\"

Python keeps no trace of them at runtime, so they are read from the class's source with `ast`;
an inherited field counts as documented where it is declared (DataConfig's `gsr` is
ExampleOptions').
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import textwrap
from dataclasses import dataclass

import pytest

CONFIG_MODULES = (
    "pegasus_gsg.training.config",
    "pegasus_gsg.data.masking",
    "pegasus_gsg.evaluation.generation",
    "pegasus_gsg.core.gsg",
    "pegasus_gsg.demo",
    "pegasus_gsg.server.settings",
    "pegasus_gsg.server.app",
)
"""The modules whose dataclasses are configuration or options a user sets."""


def declared_docs(cls: type) -> dict[str, str]:
    """Field name -> attribute docstring, for the fields declared in `cls`'s own body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
            and after.value.value.strip()
        ):
            docs[stmt.target.id] = after.value.value
    return docs


def undocumented(cls: type) -> list[str]:
    """The fields of the dataclass `cls` without an attribute docstring where declared."""
    documented: set[str] = set()
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and klass.__module__ != "builtins":
            documented |= set(declared_docs(klass))
    return [f.name for f in dataclasses.fields(cls) if f.name not in documented]


def dataclasses_of(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module_name", CONFIG_MODULES)
def test_every_field_of_every_dataclass_is_documented(module_name):
    classes = dataclasses_of(module_name)
    assert classes, f"{module_name} defines no dataclass; is the list above out of date?"
    missing = {cls.__name__: undocumented(cls) for cls in classes}
    missing = {name: fields for name, fields in missing.items() if fields}
    assert not missing, (
        f"{module_name}: fields without an attribute docstring (a string literal on the line "
        f"after the field, saying what it is, its unit and allowed values): {missing}"
    )


@dataclass
class _HalfDocumented:
    documented: int = 1
    """Has its docstring."""
    bare: int = 2
    # a comment is not a docstring
    commented: int = 3
    blank: int = 4
    """ """


@dataclass
class _Extended(_HalfDocumented):
    added: float = 0.5
    """Declared and documented in the subclass."""


def test_the_check_names_exactly_the_undocumented_fields():
    assert undocumented(_HalfDocumented) == ["bare", "commented", "blank"]
    # Inherited fields count where they are declared: the same three are missing, no more.
    assert undocumented(_Extended) == ["bare", "commented", "blank"]


def test_the_check_finds_the_dataclasses_of_a_module():
    names = {cls.__name__ for cls in dataclasses_of("pegasus_gsg.training.config")}
    assert {"ModelConfig", "DataConfig", "TrainConfig", "CheckpointConfig"} <= names
    assert "ExampleOptions" not in names  # imported there, checked in its own module
    assert "ExampleOptions" in {cls.__name__ for cls in dataclasses_of("pegasus_gsg.data.masking")}
