"""The layering of DESIGN section 2: each package of ``tfmsr/`` imports only from the layers before it
(module-level and function-level imports alike); siblings of one layer do not import each other; the
library never imports the scripts folder ``pipelines``."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tfmsr")
# core <- features <- data, layers <- distribute, serving <- ranking, retrieval <- cli
LAYERS = {"core": 0, "features": 1, "data": 2, "layers": 2, "distribute": 3, "serving": 3,
          "ranking": 4, "retrieval": 4, "cli": 5}


def _package(module: str):
    """``tfmsr.ranking.models.base`` -> ``ranking``; ``tfmsr`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tfmsr" else None


def _imports(path: str, module: str):
    """(line, imported module) of every import in the file, relative ones resolved."""
    tree = ast.parse(open(path).read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level] if not path.endswith("__init__.py") else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base in ("tfmsr",) else [base]
            for name in names:
                yield node.lineno, name


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def violations():
    """``file:line: import X (layer a -> layer b)`` for every edge the layering forbids."""
    found = []
    for path, module in _modules():
        own = _package(module)
        for line, target in _imports(path, module):
            where = f"{os.path.relpath(path, os.path.dirname(ROOT))}:{line}: import {target}"
            if target == "pipelines" or target.startswith("pipelines."):
                found.append(f"{where} (the library never imports the scripts folder)")
                continue
            other = _package(target)
            if own is None or other is None or other == own:
                continue
            if other not in LAYERS or own not in LAYERS:
                found.append(f"{where} (package '{other if other not in LAYERS else own}' is in no layer)")
            elif LAYERS[other] >= LAYERS[own]:
                kind = "sibling" if LAYERS[other] == LAYERS[own] else "back-edge"
                found.append(f"{where} ({kind}: {own} may not import {other})")
    return found


def test_every_package_is_in_a_layer():
    packages = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert packages == set(LAYERS), f"packages of tfmsr/ without a layer: {sorted(packages - set(LAYERS))}"


def test_no_back_edge_or_sibling_edge():
    assert violations() == [], "\n".join(violations())


def test_the_check_sees_function_level_imports(tmp_path):
    """The walker reports an import inside a function body, naming file and line (so the check can fail)."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from tfmsr.cli import main\n")
    assert list(_imports(str(path), "tfmsr.core.m")) == [(2, "tfmsr.cli")]
