"""The package's shape: imports only run down a declared layer order, with no cycle, and
loading a model to sample from it never imports Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import duo

from test_evaluation import tiny_runs  # noqa: F401  (a Duo checkpoint trained once per session)

ROOT = Path(duo.__file__).parent

# Lowest first: a module may import its own layer or any layer below it, never above.
LAYERS = [
    ["utils"],
    ["schedules", "duality", "processes", "data"],
    ["relaxation", "losses", "models", "samplers"],
    ["methods"],
    ["config", "generation", "recipes"],
    ["loading"],
    ["interop"],
    ["checkpoints"],
    ["evaluation"],
    ["training"],
    ["commands", "cli", "serve"],
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """duo modules ``name`` imports, anywhere in the file (lazy imports included);
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        for target in targets:
            if not target.startswith("duo"):
                continue
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else "duo"


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _modules()} - {"duo"}
    assert tops <= set(LEVEL), f"add {sorted(tops - set(LEVEL))} to LAYERS"


def test_imports_never_go_up_the_layers():
    upward = []
    for name, targets in _graph().items():
        if _top(name) == "duo":  # the package root re-exports what users reach for
            continue
        for target in targets:
            if _top(target) != "duo" and LEVEL[_top(target)] > LEVEL[_top(name)]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports up the layers:\n" + "\n".join(sorted(upward))


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_check_sees_a_planted_upward_import(tmp_path):
    # The walker must find lazy (in-function) imports, relative and absolute.
    fake = tmp_path / "duo" / "losses" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..training import module\n    import duo.checkpoints\n")
    modules = {"duo.losses.bad": fake, "duo.training": fake, "duo.training.module": fake, "duo.checkpoints": fake}
    assert _imports("duo.losses.bad", fake, modules) == {"duo.training.module", "duo.checkpoints"}


def test_loading_and_sampling_a_checkpoint_does_not_import_lightning(tiny_runs):  # noqa: F811
    code = (
        "import sys\n"
        "from duo.checkpoints import load_checkpoint\n"
        "from duo.generation import generate_text\n"
        f"loaded = load_checkpoint({str(tiny_runs['duo'])!r})\n"
        "out = generate_text(loaded.method, loaded.tokenizer, num_samples=1, seq_len=16, steps=2)\n"
        "assert out.texts\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print('LIGHTNING', bad[:3])\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
