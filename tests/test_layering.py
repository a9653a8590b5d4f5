"""The layering rules (README, "Layers"), checked on the source with ``ast`` and on a fresh interpreter.

1. The library -- ``pyro_meta/`` outside the app layer -- never imports the zoo (``pyro_meta.models``,
   the repo's ``models/``) nor the app layer (``pyro_meta.apps``). The app layer is
   ``pyro_meta/apps/`` plus the entry points ``pyro_meta/cli.py`` and ``pyro_meta/__main__.py``.
2. Only ``pyro_meta/apps/`` imports the zoo, and lazily: inside functions, never at module level.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_meta"
ENTRY_POINTS = {"cli.py", "__main__.py"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False):
    """``(absolute imported name, lineno, at module level)`` for every import in ``source``.

    ``module`` is the dotted name of the file (for relative imports); ``from X import a`` yields
    ``X`` and ``X.a`` (``a`` may be a submodule: ``from .. import models``).
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    # statements at module level, also inside top-level if/try blocks (not inside def/class)
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node) if not isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno, id(node) in top_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((name, node.lineno, id(node) in top_level))
            out.extend((f"{name}.{a.name}", node.lineno, id(node) in top_level) for a in node.names)
    return out


def _hits(name: str, targets) -> bool:
    return any(name == t or name.startswith(t + ".") for t in targets)


def _library_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "apps" or (len(rel.parts) == 1 and rel.name in ENTRY_POINTS):
            continue
        yield path


def _edges(path: pathlib.Path, targets):
    found = imports(path.read_text(), _module_name(path), path.name == "__init__.py")
    return [(f"{path.relative_to(ROOT)}:{line}", name) for name, line, _ in found if _hits(name, targets)]


def test_the_import_parser_sees_every_spelling():
    """The checker must be able to fail: each spelling of a zoo import is found, lazy ones too."""
    src = "\n".join(
        [
            "import pyro_meta.models",
            "from pyro_meta.models import MAML",
            "from ..models import NeuralProcess",
            "from .. import models",
            "import models",
            "def f():",
            "    from ..models import ABML",
        ]
    )
    found = imports(src, "pyro_meta.data.tasks")
    edges = [(line, top) for name, line, top in found if _hits(name, ("pyro_meta.models", "models"))]
    assert sorted({line for line, _ in edges}) == [1, 2, 3, 4, 5, 7]
    assert all(top for line, top in edges if line < 7) and not any(top for line, top in edges if line == 7)
    assert not [
        n
        for n, _, _ in imports("from .model import MetaModel\nimport modelsx", "pyro_meta.x")
        if _hits(n, ("pyro_meta.models", "models"))
    ]


def test_library_never_imports_the_zoo_nor_the_app_layer():
    files = list(_library_files())
    assert len(files) > 30 and PACKAGE / "evaluation.py" in files and PACKAGE / "inference" / "fit.py" in files
    edges = [e for path in files for e in _edges(path, ("pyro_meta.models", "models", "pyro_meta.apps"))]
    assert not edges, f"the library imports the zoo or the app layer: {edges}"


def test_entry_points_do_not_import_the_zoo():
    edges = [e for name in sorted(ENTRY_POINTS) for e in _edges(PACKAGE / name, ("pyro_meta.models", "models"))]
    assert not edges, edges


def test_the_app_layer_imports_the_zoo_lazily():
    apps = sorted((PACKAGE / "apps").rglob("*.py"))
    lazy, eager = [], []
    for path in apps:
        for name, line, top in imports(path.read_text(), _module_name(path), path.name == "__init__.py"):
            if _hits(name, ("pyro_meta.models", "models")):
                (eager if top else lazy).append(f"{path.relative_to(ROOT)}:{line}")
    assert not eager, f"module-level zoo imports in the app layer: {eager}"
    assert lazy, "the app layer builds zoo models: some function imports pyro_meta.models"


def test_python_m_pyro_meta_help_loads_no_zoo_module():
    """A fresh interpreter: importing the library and the app layer, and ``python -m pyro_meta --help``
    (run as ``runpy`` does for ``-m``), load no ``pyro_meta.models`` module."""
    code = "\n".join(
        [
            "import runpy, sys",
            "import pyro_meta, pyro_meta.apps, pyro_meta.apps.commands, pyro_meta.apps.build, pyro_meta.apps.demo",
            "sys.argv = ['pyro-meta', '--help']",
            "try:",
            "    runpy.run_module('pyro_meta', run_name='__main__', alter_sys=True)",
            "except SystemExit as e:",
            "    assert e.code == 0, e.code",
            "print('ZOO', sorted(m for m in sys.modules if m == 'pyro_meta.models' or m.startswith('pyro_meta.models.')))",
        ]
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert all(c in res.stdout for c in ("train", "evaluate", "predict", "demo", "--version")), res.stdout
    assert res.stdout.strip().splitlines()[-1] == "ZOO []", res.stdout
