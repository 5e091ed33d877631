"""The compiled core in tests (detectors.native).

The suite runs the core as it runs in production: compiled, when built (scripts/test requires it,
NOTIFGUARD_NATIVE=1). Compiled code calls its own functions, reads its constants as built, and its
classes and instances take no new attributes: a test that patches the core's internals would test
nothing there. Such a test is marked `python_core`: it is skipped in a compiled run and runs with
the core's Python modules (scripts/test runs those tests again with NOTIFGUARD_NATIVE=0). So that
none is forgotten, patching a compiled module, or a class or instance of one, fails the test that
is not marked.
"""

from __future__ import annotations

import pydoc
import sys
from typing import Any

import pytest

import detectors

_MARK = "python_core"


def _compiled_module(name: str | None) -> bool:
    module = sys.modules.get(name or "")
    return module is not None and name is not None and name.startswith("detectors.") and _is_compiled(module)


def _is_compiled(module: Any) -> bool:
    return not (getattr(module, "__file__", None) or ".py").endswith(".py")


def _in_compiled_core(target: object) -> bool:
    """Whether patching `target` (a module, a class or an instance) reaches into compiled code."""
    if isinstance(target, type(sys)):
        return _compiled_module(target.__name__)
    cls = target if isinstance(target, type) else type(target)
    return _compiled_module(getattr(cls, "__module__", None))


_current: list[pytest.Item] = []
_setattr = pytest.MonkeyPatch.setattr


def _guarded_setattr(self: pytest.MonkeyPatch, target: Any, *args: Any, **kwargs: Any) -> None:
    # (a dotted name, "package.module.name", patches what its part before the last dot names)
    owner = pydoc.locate(target.rpartition(".")[0]) if isinstance(target, str) else target
    if detectors.NATIVE and owner is not None and _in_compiled_core(owner):
        item = _current[-1] if _current else None
        if item is None or item.get_closest_marker(_MARK) is None:
            raise AssertionError(
                f"patching {target!r}, which is compiled (detectors.native): mark the test "
                f"@pytest.mark.{_MARK} (it then runs with the Python modules)"
            )
    _setattr(self, target, *args, **kwargs)


pytest.MonkeyPatch.setattr = _guarded_setattr  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if detectors.NATIVE and item.get_closest_marker(_MARK) is not None:
        pytest.skip("patches the core's internals: runs with its Python modules (NOTIFGUARD_NATIVE=0)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()
