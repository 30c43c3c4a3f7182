"""The package layout keeps the architecture of docs/architecture.md true.

Every module of scorefpe/ is parsed with `ast` (nothing is imported); each import of a scorefpe
module, at module level or inside a function, is an arrow of the import graph. The tests fail
if an arrow points from a package to one above it or beside it (`LAYERS`), if the graph has a
circle, if two library modules share a name, or if one package folder holds more than
`MAX_SHARE` of the package's lines. `test_checker_catches_*` plant each fault in a small fake
tree and show that the checks see it.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "scorefpe"

# Bottom to top. A module may import from its own package and from packages in lower rows;
# packages in the same row are independent of each other. The root scorefpe/__init__.py (the
# public shortcuts) sits on top of everything it re-exports and is not in the table.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_util",),
    ("sde",),
    ("data",),
    ("models",),
    ("operators",),
    ("residuals",),
    ("penalties",),
    ("symbolic", "sampling", "metrics", "training"),
    ("validation", "pinn", "modelcheck", "evaluation"),
    ("experiments",),
    ("cli",),
)
MAX_SHARE = 0.20


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root/package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path, modules: dict[str, Path], package: str) -> set[str]:
    """The modules of `package` that the file imports anywhere (TYPE_CHECKING and function-level
    imports included): `from a.b import c` is a.b.c when that is a module, else a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            if name == package or name.startswith(package + "."):
                # `import a.b.c` of a name that is not a module: its longest module prefix
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                out.add(name)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself excluded)."""
    modules = module_files(root, package)
    return {m: imported_modules(p, modules, package) - {m} for m, p in modules.items()}


def top_package(module: str, package: str) -> str | None:
    """The first component below `package` ("scorefpe.metrics.lenet" -> "metrics"); None for
    the root package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def rank_of(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {name: i for i, row in enumerate(layers) for name in row}


def layering_violations(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...],
                        package: str) -> list[str]:
    """Arrows that point up or sideways in `layers`, and modules that are in no layer."""
    rank = rank_of(layers)
    bad = []
    for module, deps in sorted(graph.items()):
        src = top_package(module, package)
        if src is None:
            continue
        if src not in rank:
            bad.append(f"{module}: package {src!r} is in no layer")
            continue
        for dep in sorted(deps):
            dst = top_package(dep, package)
            if dst == src:
                continue
            if dst is None:
                bad.append(f"{module} imports the root package {dep} (import the module instead)")
            elif dst not in rank:
                bad.append(f"{module} imports {dep}: package {dst!r} is in no layer")
            elif rank[dst] >= rank[src]:
                where = "beside" if rank[dst] == rank[src] else "above"
                bad.append(f"{module} imports {dep}: {dst!r} is {where} {src!r}")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def duplicate_names(root: Path, package: str, exempt: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Module file names (without .py; __init__/__main__ aside) used more than once."""
    files = [p for p in (root / package).rglob("*.py")
             if p.stem not in ("__init__", "__main__")
             and p.relative_to(root / package).parts[0] not in exempt]
    counts = Counter(p.stem for p in files)
    return {name: sorted(str(p.relative_to(root)) for p in files if p.stem == name)
            for name, n in counts.items() if n > 1}


def package_shares(root: Path, package: str) -> dict[str, float]:
    """Share of the package's .py lines in each sub-package folder."""
    lines = {p: len(p.read_text().splitlines()) for p in (root / package).rglob("*.py")}
    total = sum(lines.values())
    shares: Counter[str] = Counter()
    for p, n in lines.items():
        rel = p.relative_to(root / package).parts
        if len(rel) > 1:
            shares[rel[0]] += n / total
    return dict(shares)


# ---------------------------------------------------------------------------------------------
# The real package
# ---------------------------------------------------------------------------------------------
GRAPH = import_graph(ROOT, PACKAGE)


def test_graph_sees_known_arrows():
    """Control: the parser finds arrows that are there, of every import form."""
    assert "scorefpe.sde" in GRAPH["scorefpe.operators"]  # from scorefpe.sde import SDE
    assert "scorefpe.operators" in GRAPH["scorefpe.penalties"]  # from scorefpe import operators
    assert "scorefpe.training.distributed" in GRAPH["scorefpe.training.loop"]  # ... import x as y
    assert "scorefpe.metrics.lenet" in GRAPH["scorefpe.metrics.sample_quality"]
    assert "scorefpe.training.mnist_unet" in GRAPH["scorefpe.evaluation.run_eval"]  # in a function
    assert len(GRAPH) > 60


def test_every_package_is_in_a_layer():
    packages = {top_package(m, PACKAGE) for m in GRAPH} - {None}
    assert packages <= set(rank_of(LAYERS)), packages - set(rank_of(LAYERS))
    assert set(rank_of(LAYERS)) <= packages  # no stale layer names


def test_no_import_points_up_or_sideways():
    assert layering_violations(GRAPH, LAYERS, PACKAGE) == []


def test_no_import_circle():
    assert import_cycles(GRAPH) == []


def test_no_two_library_modules_share_a_name():
    # cli modules carry a _cmd suffix (cli/lenet_cmd.py is `scorefpe lenet`) for this reason
    assert duplicate_names(ROOT, PACKAGE) == {}


def test_no_package_folder_holds_more_than_a_fifth_of_the_lines():
    shares = package_shares(ROOT, PACKAGE)
    assert len(shares) >= len(rank_of(LAYERS)) - 5  # control: the folders were found
    assert {k: round(v, 3) for k, v in shares.items() if v > MAX_SHARE} == {}


# ---------------------------------------------------------------------------------------------
# The checker on planted faults
# ---------------------------------------------------------------------------------------------
FAKE_LAYERS = (("core",), ("lib", "other"), ("top",))


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"fake/__init__.py": "", "fake/core.py": "import math\n",
                      "fake/lib/__init__.py": "", "fake/other/__init__.py": "",
                      "fake/top/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checker_passes_a_clean_fake_tree(tmp_path):
    root = _fake_tree(tmp_path, {"fake/lib/a.py": "from fake.core import x\n",
                                 "fake/top/run.py": "from fake.lib import a\nimport fake.other\n"})
    graph = import_graph(root, "fake")
    assert graph["fake.top.run"] == {"fake.lib.a", "fake.other"}
    assert layering_violations(graph, FAKE_LAYERS, "fake") == []
    assert import_cycles(graph) == []


@pytest.mark.parametrize("source", [
    "from fake.top.run import main\n",  # module level
    "def f():\n    from fake.top import run\n",  # inside a function
    "import typing\nif typing.TYPE_CHECKING:\n    import fake.top.run\n",
])
def test_checker_catches_a_planted_upward_import(tmp_path, source):
    root = _fake_tree(tmp_path, {"fake/top/run.py": "main = 1\n", "fake/lib/a.py": source})
    bad = layering_violations(import_graph(root, "fake"), FAKE_LAYERS, "fake")
    assert bad == ["fake.lib.a imports fake.top.run: 'top' is above 'lib'"]


def test_checker_catches_a_sideways_import_and_a_circle(tmp_path):
    root = _fake_tree(tmp_path, {"fake/lib/a.py": "from fake.other import b\n",
                                 "fake/other/b.py": "def f():\n    import fake.lib.a\n"})
    graph = import_graph(root, "fake")
    assert len(layering_violations(graph, FAKE_LAYERS, "fake")) == 2
    assert import_cycles(graph) == [["fake.lib.a", "fake.other.b"]]


def test_checker_catches_duplicate_names_and_a_big_folder(tmp_path):
    root = _fake_tree(tmp_path, {"fake/lib/core.py": "x = 1\n" * 50})
    assert duplicate_names(root, "fake") == {"core": ["fake/core.py", "fake/lib/core.py"]}
    assert package_shares(root, "fake")["lib"] > 0.9


# ---------------------------------------------------------------------------------------------
# What the wheel installs (issue 18: it used to install a top-level package named `cli`)
# ---------------------------------------------------------------------------------------------
def test_the_wheel_installs_only_scorefpe_and_its_script_resolves():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["scorefpe*"]
    target = project["project"]["scripts"]["scorefpe"]
    module, _, attr = target.partition(":")
    assert module in GRAPH and module.startswith("scorefpe.cli.")
    assert not (ROOT / "cli").exists()
    import importlib

    assert callable(getattr(importlib.import_module(module), attr))


def test_python_m_scorefpe_cli_runs_the_command():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "scorefpe.cli", "check", "--dataset", "nope"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr  # click's usage error, through __main__
    assert "Usage: scorefpe check" in r.stderr and "'nope'" in r.stderr
