"""The house's layers: imports point down only (README, "Layout").  Parses every module of the
installed namespace and of tools/ (imports inside functions included) and fails on any import of
a higher layer, naming the file, the line and both layers.  No build, no import of the code."""

import ast
import os

import pytest
from conftest import ROOT

# folder -> package name (setup.py's package_dir)
PACKAGES = {"f8tvm": "f8tvm", "relay_passes": "f8tvm.passes", "schedules": "f8tvm.schedules",
            "targets": "f8tvm.targets", "tools": "tools"}

# bottom first; a module may import modules of its own layer and of the layers below it
LAYERS = [
    ("seam", ["f8tvm.core.errors", "f8tvm.core._tvm"]),
    ("targets", ["f8tvm.targets"]),
    ("core", ["f8tvm.core"]),
    ("passes", ["f8tvm.passes", "f8tvm.frontend.torch_import", "f8tvm.models"]),
    ("schedules", ["f8tvm.schedules"]),
    ("deciders", ["f8tvm.calibrate", "f8tvm.qat", "f8tvm.frontend.f8net", "f8tvm.fakequant",
                  "f8tvm.reference", "f8tvm.data"]),
    ("pipeline", ["f8tvm.pipeline", "f8tvm.mcu.emit"]),
    ("top", ["f8tvm.api", "f8tvm.build", "f8tvm.tune", "f8tvm.run", "f8tvm.runtime", "f8tvm",
             "f8tvm.mcu"]),
    ("tools", ["tools"]),
]
# what the deployment runtime (a board: TVM's runtime and NumPy, no compiler, no torch) may reach
RUNTIME = {"f8tvm.runtime", "f8tvm.run"}
DEPLOYED = {"f8tvm", "f8tvm.runtime", "f8tvm.run", "f8tvm.data", "f8tvm.core",
            "f8tvm.core.errors", "f8tvm.core.fixedpoint", "f8tvm.targets", "f8tvm.targets.base",
            "f8tvm.targets.cpu", "f8tvm.targets.x86", "f8tvm.targets.arm", "f8tvm.targets.mcu"}


def _modules():
    mods = {}
    for folder, package in PACKAGES.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, folder))
                parts = rel[:-3].split(os.sep)
                is_pkg = parts[-1] == "__init__"
                name = ".".join([package, *(parts[:-1] if is_pkg else parts)])
                mods[name] = (os.path.join(dirpath, f), is_pkg)
    return mods


MODULES = _modules()


def _imports(name):
    """(line, imported module) of every import of ours in module ``name``."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # "from pkg import sub" imports the submodule pkg.sub
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            out += [(node.lineno, m) for m in subs] or [(node.lineno, mod)]
    return [(line, m) for line, m in out if m.split(".")[0] in ("f8tvm", "tools")]


def layer_of(module):
    best, rank = None, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best)):
                best, rank = p, i
    return rank


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    up = [f"{MODULES[module][0]}:{line}: {module} ({LAYERS[mine][0]}) imports {target} "
          f"({LAYERS[layer_of(target)][0]})"
          for line, target in _imports(module) if layer_of(target) > mine]
    assert not up, "\n".join(up)


def test_the_runtime_reaches_only_deployed_modules():
    """The runtime's imports, followed through f8tvm, stay in the files a board gets."""
    seen, todo = set(), list(RUNTIME)
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        todo += [t for _, t in _imports(m) if t in MODULES]
    assert seen <= DEPLOYED, sorted(seen - DEPLOYED)


def test_the_check_fails_on_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a pass importing the pipeline is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from f8tvm.pipeline import run\n")
    monkeypatch.setitem(MODULES, "f8tvm.passes.bad", (str(bad), False))
    with pytest.raises(AssertionError, match="passes.bad .passes. imports f8tvm.pipeline"):
        test_imports_point_down("f8tvm.passes.bad")


def _lazy_imports_without_reason(path):
    """Imports inside functions whose line, or the comment or import lines just above them, do
    not say ``lazy:`` (why the import cannot sit at the top of the file)."""
    lines = open(path).read().split("\n")
    tree = ast.parse("\n".join(lines))
    import_lines = {i for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for i in range(node.lineno, node.end_lineno + 1)}
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            said = any("lazy:" in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1))
            i = node.lineno - 1
            while not said and i >= 1:
                text = lines[i - 1].strip()
                if not (i in import_lines or text.startswith("#") or text == ""):
                    break
                said = "lazy:" in text
                i -= 1
            if not said:
                bad.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(bad))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_sit_at_the_top(module):
    """A file's dependencies are visible from its head: an import inside a function must say
    why (``# lazy: ...``, e.g. an optional package, or TVM kept out of the runtime's start)."""
    assert _lazy_imports_without_reason(MODULES[module][0]) == []


def test_the_lazy_check_fails_on_a_silent_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import json\n\n    # lazy: optional\n    import yaml\n"
                 "    from x import (\n        y,\n    )\n    x = 1\n    import os\n")
    assert _lazy_imports_without_reason(str(f)) == [f"{f}:10: import os", f"{f}:2: import json"]
