"""Every example in the package's docstrings runs as written (doctest), module by module."""

import doctest
import importlib
import pkgutil

import pytest

import sepconv

MODULES = sorted(m.name for m in pkgutil.walk_packages(sepconv.__path__, "sepconv.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run_as_written(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # a module of an optional extra that is not installed
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"


def test_the_modules_carry_examples():
    """A guard on the collection: the walk finds the package's modules, and they have examples."""
    assert {"sepconv.functional", "sepconv.cost", "sepconv.convert.trials"} <= set(MODULES)
    assert doctest.testmod(importlib.import_module("sepconv.convert.trials"), report=False).attempted >= 3
