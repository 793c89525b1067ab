"""The floors' bytecode cache, written before their workers start.

The floors' workflows run in the SDK's sandbox, which imports their module afresh
for every workflow run, from its bytecode cache when there is one. Where
PYTHONDONTWRITEBYTECODE is set, Python never writes that cache, so every floor
workflow would compile its module again and the floor would come out lower than
it is (the app's workflows are not sandboxed). `py_compile` writes it anyway.
"""

from __future__ import annotations

import importlib.util
import py_compile
import sys
from types import ModuleType


def cache_bytecode(module: ModuleType) -> None:
    source = module.__file__
    if source is None:
        return
    try:
        py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
    except (OSError, py_compile.PyCompileError) as err:
        print(f"warning: no bytecode cache for {source} ({err}): the floor comes out lower than it is", file=sys.stderr)
