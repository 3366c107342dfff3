"""The package's import graph read from its source with ``ast`` (function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Set

PACKAGE = "vla_inference"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(path: Path, root: Path) -> Set[str]:
    """Every dotted name ``path`` imports, at any depth of the file (``from a import b`` gives a.b and a)."""
    importer = module_name(path, root)
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(importer, path.name == "__init__.py", node)
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def package_graph(root: Path) -> Dict[str, Set[str]]:
    """Module -> the package modules it imports (an imported attribute counts as its module)."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    graph: Dict[str, Set[str]] = {}
    for path in files:
        importer = module_name(path, root)
        targets = set()
        for name in imported_names(path, root):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != importer and name.startswith(PACKAGE):
                targets.add(name)
        graph[importer] = targets
    return graph


def external_imports(root: Path, folder: str) -> Set[str]:
    """Top-level names of everything outside the package that ``folder``'s files import."""
    names: Set[str] = set()
    for path in (root / PACKAGE / folder).rglob("*.py"):
        names.update(n.split(".")[0] for n in imported_names(path, root) if n and not n.startswith(PACKAGE))
    return names


def folder_of(module: str) -> str:
    """``vla_inference.runtime.backends.base`` -> ``runtime``; a top-level module is its own folder."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def folder_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    folders: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        here = folder_of(module)
        folders.setdefault(here, set()).update(folder_of(t) for t in targets if folder_of(t) != here)
    return folders


def cycles(graph: Dict[str, Iterable[str]]) -> List[List[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
