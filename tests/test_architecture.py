"""The house shows its parts: no import circles, and no import from a lower layer into a higher one
(datamodules -> lightning_modules -> benchmark), read from the source with `ast` (function-level imports count)."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"datamodules": 0, "lightning_modules": 1, "benchmark": 2}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> project modules it imports. `from pkg import name` is an edge to `pkg.name` when that is a module
    (importing a submodule), else to `pkg` (a name its __init__ defines)."""
    edges = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                    if target in mods and target != name:
                        edges[name].add(target)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in mods and a.name != name)
    return edges


def _cycles(edges: dict[str, set[str]], nodes) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    mods = _modules()
    assert _cycles(_imports(mods), mods) == []


def test_no_import_from_a_lower_layer_into_a_higher_one():
    mods = _modules()
    upward = [f"{a} -> {b}" for a, targets in _imports(mods).items() for b in targets
              if LAYERS[a.split(".")[0]] < LAYERS[b.split(".")[0]]]
    assert upward == []


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The walk is not vacuous: a planted circle and an upward import are found."""
    for pkg, body in (("datamodules", "from benchmark import x\n"), ("benchmark", "from datamodules import y\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / ("y.py" if pkg == "datamodules" else "x.py")).write_text(body)
    (tmp_path / "lightning_modules").mkdir()
    import tests.test_architecture as me

    monkeypatch.setattr(me, "ROOT", tmp_path)
    mods = me._modules()
    edges = me._imports(mods)
    assert edges["datamodules.y"] == {"benchmark.x"} and edges["benchmark.x"] == {"datamodules.y"}
    assert me._cycles(edges, mods) == [["benchmark.x", "datamodules.y"]]


def test_the_tree():
    """benchmark/ is metrics, evaluate, boards and cli; lightning_modules/ is restorers, dedrifters and task models."""
    for folder in ("benchmark/metrics", "benchmark/evaluate", "benchmark/boards", "benchmark/cli",
                   "lightning_modules/restorers", "lightning_modules/dedrifters", "lightning_modules/task_models"):
        assert (ROOT / folder / "__init__.py").is_file(), folder
    flat = sorted(p.name for p in (ROOT / "benchmark").glob("*.py") if p.name != "__init__.py")
    assert flat == [], flat
