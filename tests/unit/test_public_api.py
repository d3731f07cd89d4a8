"""Keeps the public API complete and honest: ``__all__`` of each package against its namespace, its private modules
and the documentation.

The rules, strict where a mistake reaches users and silent where a name is plumbing:

1. ``__all__`` is unique and in ruff's RUF022 ("isort-style") order, and every name in it imports from the package.
2. The package namespace is exactly ``__all__``: every public (non-underscore, non-module) name that ``__init__``
   binds is exported, and nothing is exported that ``__init__`` does not bind. A re-export cannot be forgotten.
3. A private module that declares its own ``__all__`` has every one of those names re-exported by its package.
4. "Documented as public" means shown to users: a class or function defined in a private module and named in
   ``README.md`` or ``docs/*.md`` (as inline code, e.g. `` `MailboxSpec` `` or `` `actors.Overflow.REJECT` ``) is in
   its package's ``__all__``. Undocumented helpers (``Mailbox``, ``Incarnation``...) need no listing here, so the test
   does not break on every new internal class; documenting one makes it public.
5. Documentation code imports only exported names (``from actors import X`` with X in ``actors.__all__``), never a
   private module.
6. Every exported class and function has a docstring of its own (house style).
"""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("actors", "supervisors")
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _packages() -> list[types.ModuleType]:
    """Every package of the distribution (top level and subpackages) that is importable."""
    found: list[types.ModuleType] = []
    for name in TOP_LEVEL:
        package = importlib.import_module(name)
        found.append(package)
        found.extend(
            importlib.import_module(info.name)
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}.")
            if info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_")
        )
    return found


PACKAGES = _packages()
#: The packages that declare a public API (a package without ``__all__`` has none yet, e.g. an empty ``sim``).
EXPORTING = [package for package in PACKAGES if hasattr(package, "__all__")]
EXPORTING_IDS = [package.__name__ for package in EXPORTING]


def isort_style_key(name: str) -> tuple[int, list[Any]]:
    """Ruff's RUF022 order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; a natural sort within each."""
    if len(name) > 1 and name.isupper():
        category = 0
    elif name[:1].isupper():
        category = 1
    else:
        category = 2
    # Alternating text and number runs: numbers compare by value ("a2" < "a10").
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return category, natural


def _private_modules(package: types.ModuleType) -> list[types.ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("_") and not info.ispkg
    ]


def _defined_public(module: types.ModuleType) -> dict[str, Any]:
    """The public classes and functions a module defines itself (not the ones it imports)."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }


def _defining_package() -> dict[str, set[str]]:
    """Name -> the packages whose private modules define a public class or function of that name."""
    owners: dict[str, set[str]] = {}
    for package in EXPORTING:
        for module in _private_modules(package):
            for name in _defined_public(module):
                owners.setdefault(name, set()).add(package.__name__)
    return owners


_INLINE_CODE = re.compile(r"(?<!`)`([A-Za-z_][\w.]*)(?:\(.*?\))?`(?!`)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _documented_names() -> dict[str, set[str]]:
    """Names written as inline code in the docs -> the files that show them.

    A dotted path loses its leading package (``actors.chat.ReplayRing`` -> ``ReplayRing``) and keeps its first
    component (``Overflow.REJECT`` -> ``Overflow``), so methods and attributes are never taken for top-level names.
    """
    packages = {package.__name__ for package in PACKAGES}
    shown: dict[str, set[str]] = {}
    for path in DOC_FILES:
        text = _FENCE.sub("", path.read_text(encoding="utf-8"))
        for match in _INLINE_CODE.finditer(text):
            parts = match.group(1).split(".")
            start = 0
            while start < len(parts) - 1 and ".".join(parts[: start + 1]) in packages:
                start += 1
            shown.setdefault(parts[start], set()).add(path.name)
    return shown


def _documented_imports() -> list[tuple[str, str, str]]:
    """``(file, module, name)`` for every ``from module import name`` statement in the docs' code blocks.

    Each statement is parsed on its own (a block may hold shell lines or an elided ``...`` snippet).
    """
    found: list[tuple[str, str, str]] = []
    for path in DOC_FILES:
        for block in _FENCE.findall(path.read_text(encoding="utf-8")):
            lines = block.splitlines()
            for index, line in enumerate(lines):
                if not re.match(r"\s*from\s+\S+\s+import\s", line):
                    continue
                statement = line.strip()
                following = iter(lines[index + 1 :])
                while statement.count("(") > statement.count(")"):
                    statement += " " + next(following, ")").strip()
                node = ast.parse(statement).body[0]
                assert isinstance(node, ast.ImportFrom), statement
                assert node.module is not None, statement
                found.extend((path.name, node.module, alias.name) for alias in node.names)
    return found


class TestSortKey:
    def test_isort_style_key_mixed_casing_constants_then_classes_then_rest(self) -> None:
        names = ["open_actor_system", "Actor", "SEED_ALIASES", "DEFAULT_MAX_BYTES", "ActorRef", "agent_started"]
        assert sorted(names, key=isort_style_key) == [
            "DEFAULT_MAX_BYTES",
            "SEED_ALIASES",
            "Actor",
            "ActorRef",
            "agent_started",
            "open_actor_system",
        ]

    def test_isort_style_key_numbers_in_names_compared_by_value(self) -> None:
        assert sorted(["part10", "part2", "part1"], key=isort_style_key) == ["part1", "part2", "part10"]

    def test_isort_style_key_single_capital_letter_counts_as_class(self) -> None:
        assert isort_style_key("T")[0] == 1
        assert isort_style_key("TT")[0] == 0


class TestDunderAll:
    def test_top_level_packages_declare_all(self) -> None:
        # A reader finds the whole public API in actors/__init__.py and supervisors/__init__.py (STYLE.md).
        assert set(TOP_LEVEL) <= set(EXPORTING_IDS)

    @pytest.mark.parametrize("package", EXPORTING, ids=EXPORTING_IDS)
    def test_all_any_package_unique_and_isort_sorted(self, package: types.ModuleType) -> None:
        names = list(package.__all__)
        assert len(names) == len(set(names)), [name for name in names if names.count(name) > 1]
        assert names == sorted(names, key=isort_style_key)

    @pytest.mark.parametrize("package", EXPORTING, ids=EXPORTING_IDS)
    def test_all_every_name_importable_from_package(self, package: types.ModuleType) -> None:
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == []

    @pytest.mark.parametrize("package", EXPORTING, ids=EXPORTING_IDS)
    def test_namespace_public_names_equal_all(self, package: types.ModuleType) -> None:
        bound = {
            name
            for name, value in vars(package).items()
            if not name.startswith("_")
            and not isinstance(value, types.ModuleType)
            and not isinstance(value, __future__._Feature)  # `from __future__ import annotations` binds a name
        }
        exported = set(package.__all__)
        assert sorted(bound - exported) == [], "bound in __init__ but not exported"
        assert sorted(exported - bound) == [], "exported but not bound in __init__"

    @pytest.mark.parametrize("package", EXPORTING, ids=EXPORTING_IDS)
    def test_private_module_all_every_name_reexported(self, package: types.ModuleType) -> None:
        missing = [
            f"{module.__name__}.{name}"
            for module in _private_modules(package)
            for name in getattr(module, "__all__", ())
            if name not in package.__all__
        ]
        assert missing == []

    @pytest.mark.parametrize("package", EXPORTING, ids=EXPORTING_IDS)
    def test_exported_classes_and_functions_have_own_docstring(self, package: types.ModuleType) -> None:
        undocumented = []
        for name in package.__all__:
            value = getattr(package, name, None)
            if inspect.isclass(value):
                doc = value.__dict__.get("__doc__")
            elif inspect.isfunction(value):
                doc = value.__doc__
            else:
                continue
            if not (doc and doc.strip()):
                undocumented.append(name)
        assert undocumented == []


class TestDocumentedNames:
    def test_documented_private_module_names_exported_by_their_package(self) -> None:
        owners = _defining_package()
        exports = {package.__name__: set(package.__all__) for package in EXPORTING}
        missing = sorted(
            f"{name} (shown in {', '.join(sorted(files))}; defined in {owner})"
            for name, files in _documented_names().items()
            for owner in owners.get(name, ())
            if name not in exports[owner]
        )
        assert missing == []

    def test_docs_code_imports_only_exported_names(self) -> None:
        exports = {package.__name__: set(package.__all__) for package in EXPORTING}
        ours = {package.__name__ for package in PACKAGES}
        wrong = [
            f"{file}: from {module} import {name}"
            for file, module, name in _documented_imports()
            if module.split(".")[0] in TOP_LEVEL and (module not in ours or name not in exports.get(module, set()))
        ]
        assert wrong == []

    def test_docs_scan_finds_readme_example_imports(self) -> None:
        # Guards the scanner itself: the README's first example must be seen, or the two tests above prove nothing.
        assert ("README.md", "supervisors", "open_runtime") in _documented_imports()
        assert {"MailboxSpec", "Overflow", "open_actor_system"} <= set(_documented_names())
