"""The imports follow the data flow: encoders -> connectors -> mmllm core -> train -> eval.

Each folder imports only the folders before it and itself; `mmllm/cli.py` composes them all, but only inside
its functions, so `mmllm --help` starts without loading train/ or eval/. Read from the source with `ast` (an
import inside a function counts as much as one at the top), so nothing is imported to check it. Also: no
production module imports the tests or `unittest`, and no files import each other in a cycle when they load
(an import inside a function or under `TYPE_CHECKING` runs later, so it closes no such cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder on disk -> (package it installs as, its place in the flow)
FOLDERS = {"encoders": ("mmllm.encoders", 0), "connectors": ("mmllm.connectors", 1), "mmllm": ("mmllm", 2),
           "train": ("mmllm.train", 3), "eval": ("mmllm.eval", 4)}
LAYER_NAMES = {layer: folder for folder, (_, layer) in FOLDERS.items()}
CLI = ROOT / "mmllm" / "cli.py"


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [FOLDERS[folder][0], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def layer(module: str) -> int | None:
    """The place in the flow of an `mmllm...` module (the core is what no other folder claims); None for
    anything outside the package."""
    if module.split(".")[0] != "mmllm":
        return None
    for package, place in FOLDERS.values():
        if package != "mmllm" and (module == package or module.startswith(package + ".")):
            return place
    return FOLDERS["mmllm"][1]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path):
    """(line, imported module names, at module level and run at import) for every import in the file. `from
    P import x` names `P.x` where x is a module of ours, else P."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.append((child.lineno, [a.name for a in child.names], top))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                names = {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names}
                found.append((child.lineno, sorted(names), top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and is_type_checking(child):
                visit(child, False)
            else:
                visit(child, top)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_folder_imports_only_the_folders_before_it_in_the_data_flow():
    wrong = []
    for module, path in MODULES.items():
        own = layer(module)
        for line, names, top in imports(path):
            for name in names:
                target = layer(name)
                if target is None or target <= own or (path == CLI and not top):
                    continue
                lazily = " (the CLI may, but only inside a function)" if path == CLI else ""
                wrong.append(f"{where(path, line)}: {LAYER_NAMES[own]}/ imports {name}, and {LAYER_NAMES[target]}/ "
                             f"comes after it{lazily}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def is_test_code(name: str) -> bool:
    top = name.split(".")[0]
    return top in ("tests", "conftest", "unittest") or top.startswith("test_")


def test_no_production_module_imports_the_tests_or_unittest():
    wrong = [f"{where(path, line)}: imports {name}" for path in MODULES.values()
             for line, names, _ in imports(path) for name in names if is_test_code(name)]
    assert not wrong, "production code importing test code:\n" + "\n".join(wrong)


def test_no_files_import_each_other_in_a_cycle_at_module_level():
    graph = {module: {} for module in MODULES}
    for module, path in MODULES.items():
        for line, names, top in imports(path):
            for name in names:
                if top and name in MODULES and name != module:
                    graph[module].setdefault(name, line)
    cycles = []
    for start in MODULES:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:  # each cycle found once: from its smallest module, through larger ones
                    steps = [f"{where(MODULES[a], graph[a][b])} imports {b}" for a, b in zip(trail, trail[1:] + [start])]
                    cycles.append(" -> ".join(steps))
                elif nxt not in trail and nxt > start:
                    stack.append((nxt, trail + [nxt]))
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)
