"""The shape of the package (docs/architecture.md): layers that only import downward, no
import cycles, no function-level imports of our own modules outside the CLI, short functions,
a small public API, and an ``import jaxformer`` that loads no plotting or torch.

Everything here reads the source with ``ast``: no module is imported except in the subprocess
of the import-time test.
"""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxformer"

#: Layers, low to high: a module may import from its own layer or lower ones only.
LAYERS = [
    ("jaxformer.errors", "jaxformer.compile_cache", "jaxformer.runfolder", "jaxformer.version"),
    ("jaxformer.config",),
    ("jaxformer.functional", "jaxformer.functional_extras"),
    ("jaxformer.model",),
    ("jaxformer.data",),
    ("jaxformer.infer",),
    ("jaxformer.interp",),
    ("jaxformer.viz",),
    ("jaxformer.training",),
    ("jaxformer.interop",),
    ("jaxformer.cli", "jaxformer.__main__"),
    ("jaxformer",),
]
MAX_FUNCTION_LINES = 60
HEAVY = ("matplotlib", "torch", "pyarrow")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_structure.py::LAYERS")
    return best


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module if is_package else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return base + ("." + node.module if node.module else "")


def _targets(node, module: str, is_package: bool) -> list[str]:
    """The modules of ours an import statement loads (a name that is a submodule counts as it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "jaxformer"]
    base = _resolve(node, module, is_package)
    if base is None or base.split(".")[0] != "jaxformer":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _imports(module: str):
    """(target, lineno, at_module_level) for every import of ours in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    top = set(map(id, tree.body))
    for stmt in tree.body:  # imports guarded by `if TYPE_CHECKING:` or try at module level count as top
        if isinstance(stmt, (ast.If, ast.Try)):
            top.update(id(n) for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, module, is_package):
                yield target, node.lineno, id(node) in top


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    bad = []
    for module in MODULES:
        for target, line, _ in _imports(module):
            if target != module and layer_of(target) > layer_of(module):
                bad.append(f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_function_level_imports_of_our_modules_outside_the_cli():
    bad = [f"{module}:{line} imports {target} inside a function"
           for module in MODULES if layer_of(module) != layer_of("jaxformer.cli")
           for target, line, top in _imports(module) if not top]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _long_functions(limit: int):
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > limit:
                    yield f"{module}.{node.name} ({path.name}:{node.lineno}): {n} lines"


def test_no_function_is_longer_than_a_screen():
    long = list(_long_functions(MAX_FUNCTION_LINES))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_public_api_fits_on_one_screen():
    tree = ast.parse(MODULES["jaxformer"].read_text(encoding="utf-8"))
    names = [node for node in tree.body if isinstance(node, ast.Assign)
             and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
    assert names, "jaxformer/__init__.py defines no __all__"
    public = ast.literal_eval(names[0].value)
    assert len(public) <= 30, f"{len(public)} public names: {public}"
    assert len(set(public)) == len(public)


def test_import_jaxformer_loads_no_plotting_torch_or_pyarrow():
    code = ("import sys, jaxformer, jaxformer.functional\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
            "print(' '.join(sorted({m.split('.')[0] for m in bad})))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=PACKAGE.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import jaxformer loads {out.stdout.strip()}"


@pytest.mark.parametrize("rule", ["upward", "function-level"])
def test_the_rules_catch_a_bad_module(tmp_path, monkeypatch, rule):
    """The checks above would fail on a module that breaks them (not vacuous)."""
    src = {"upward": "from jaxformer.cli import main\n",
           "function-level": "def f():\n    from jaxformer import config\n    return config\n"}[rule]
    fake = tmp_path / "jaxformer" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(src)
    monkeypatch.setitem(MODULES, "jaxformer.data.bad", fake / "bad.py")
    check = {"upward": test_no_module_imports_a_higher_layer,
             "function-level": test_no_function_level_imports_of_our_modules_outside_the_cli}[rule]
    with pytest.raises(AssertionError, match="jaxformer.data.bad"):
        check()
