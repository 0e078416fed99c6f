"""The package's imports run downwards only, and no two modules import each other (directly or round
a loop). Layers, bottom up:

    0  errors, schema, safe_load, shipped   (leaves: user errors, the field type, reading .pth, shipped files)
    1  collectives, models, losses, data    (tensors in, tensors out; data on disk)
    2  methods                              (one file per method, on methods/base.py)
    3  config                               (the schema: common keys + each method's section)
    4  engine, evaluation, viz, export      (the loop, devices, I/O; metrics; figures; deployment files)
    5  api, cli, __init__                   (the small Python API, the seg-ssl command)

Every import counts, at the top of a file or inside a function: an import placed in a function to
dodge a cycle is still a cycle.
"""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

LAYERS = [
    ("errors", "schema", "safe_load", "shipped"),
    ("collectives", "models", "losses", "data"),
    ("methods",),
    ("config",),
    ("engine", "evaluation", "viz", "export"),
    ("api", "cli", "__init__"),
]


def layer_of(module: str) -> int:
    """``seg_ssl.models.segmentor`` -> 1; ``seg_ssl`` (the package's __init__) -> the top."""
    part = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module}: no layer; add it to LAYERS in {__file__}")


def package_imports(package_dir: str) -> dict[str, set[str]]:
    """module -> the seg_ssl modules it imports (``from seg_ssl.x import y`` counts ``seg_ssl.x.y``
    when ``y`` is a module, else ``seg_ssl.x``)."""
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(package_dir))[:-3].replace(os.sep, ".")
                modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    graph = {}
    for name, path in modules.items():
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                             else node.module for a in node.names)
        graph[name] = {m for m in found if m.split(".")[0] == "seg_ssl" and m != name}
    return graph


def problems(package_dir: str) -> list[str]:
    graph = package_imports(package_dir)
    out = [f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
           for src, dsts in sorted(graph.items()) for dst in sorted(dsts) if layer_of(dst) > layer_of(src)]
    state = {}  # depth-first search: 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append("cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return out


def test_imports_run_downwards_without_cycles():
    assert problems(os.path.join(ROOT, "seg_ssl")) == []


@pytest.mark.parametrize("module, planted, expected", [
    ("models/weights.py", "from seg_ssl.engine import trainer\n",
     "seg_ssl.models.weights (layer 1) imports seg_ssl.engine.trainer (layer 4)"),
    ("data/splits.py", "def late():\n    from seg_ssl.methods import METHODS\n",
     "seg_ssl.data.splits (layer 1) imports seg_ssl.methods (layer 2)"),
    ("models/weights.py", "def late():\n    import seg_ssl.models.segmentor\n",  # segmentor imports weights
     "cycle: seg_ssl.models.segmentor -> "),
])
def test_the_check_finds_a_planted_upward_import_or_cycle(tmp_path, module, planted, expected):
    copy = tmp_path / "seg_ssl"
    shutil.copytree(os.path.join(ROOT, "seg_ssl"), copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / module, "a") as f:
        f.write("\n" + planted)
    found = problems(str(copy))
    assert any(p.startswith(expected) for p in found), found


def imported_modules(*args) -> set[str]:
    """The modules ``python -X importtime ARGS`` imports (run from the repository root)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_reading_a_config_imports_neither_smp_nor_timm():
    """smp and timm (~6 s of imports here) load when a network is built or an encoder name is looked
    up, not when seg_ssl.config is imported."""
    mods = imported_modules("-c", "import seg_ssl.config")
    assert "seg_ssl.config" in mods
    assert not {m for m in mods if m.split(".")[0] in ("segmentation_models_pytorch", "timm")}


def test_the_tools_that_need_no_model_import_no_torch(tmp_path):
    metrics = tmp_path / "m.json"
    metrics.write_text('{"IoU": [0.5, 0.25], "mIoU": 0.375, "aAcc": 0.8, "mAcc": 0.6, "Acc": [0.7, 0.5]}')
    (tmp_path / "train.txt").write_text("".join(f"id{i}\n" for i in range(32)))
    for args in (("tools/compare.py", str(metrics), str(metrics), "--names", "a", "b"),
                 ("tools/make_splits.py", "--list", str(tmp_path / "train.txt"), "--out", str(tmp_path / "s"),
                  "--splits", "1/4")):
        mods = imported_modules(*args)
        assert "torch" not in mods and "seg_ssl.config" not in mods, args[0]
