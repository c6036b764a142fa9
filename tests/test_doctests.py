"""The examples in the docstrings run and say what they print (the docs match the code)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import loadtests
import sim

# loadtests' gevent modules monkey-patch or need a Locust runner (they carry no examples); the
# examples of compare, plots, report and runner are sketches of a whole run that writes files
SKIP = {"loadtests.locustfile", "loadtests.device", "loadtests.runtime", "loadtests.coordination", "sim.__main__",
        "loadtests.lab.__main__", "sim.compare", "sim.plots", "sim.report", "sim.runner"}
MODULES = sorted(m.name for package in (sim, loadtests)
                 for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".") if m.name not in SKIP)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
