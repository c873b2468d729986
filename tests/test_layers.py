"""The package's layers (.importlinter, docs/ARCHITECTURE.md) hold, and no module imports itself back.

Both read every import statement grimp finds, those inside functions included: a lazy import is still
a dependency.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def cycles(modules: Iterable[str], imports: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected components of more
    than one module, or a module importing itself), each sorted; iterative Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(sorted(imports.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(imports.get(target, ())))))
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1 or module in imports.get(module, ()):
                    found.append(sorted(group))
    return sorted(found)


def test_the_cycle_search_finds_circles_of_any_length() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "d"), ("e", "a")]:
        graph.add_import(importer=importer, imported=imported)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert cycles(sorted(graph.modules), imports) == [["a", "b", "c"], ["d"]]


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = grimp.build_graph("ptuning_v2", cache_dir=None)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    circles = cycles(sorted(graph.modules), imports)
    assert not circles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_import_contracts_hold() -> None:
    """The layers and the acyclic-siblings contract of .importlinter (what ``lint-imports`` checks)."""
    check = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / '.importlinter')!r}, no_cache=True, no_logo=True))"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout
