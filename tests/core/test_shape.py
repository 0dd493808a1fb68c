"""The shape of the library code (issue 26): no function or method in ``tfmsr/`` longer than 60 lines,
counted from its ``def`` line to its last line (a long one is split along its own phases)."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tfmsr")
MAX_LINES = 60


def long_functions(source: str, path: str, limit: int = MAX_LINES) -> list:
    """``path:function:length`` of every function, method or nested function longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{path}:{node.name}:{length}")
    return found


def _function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function ``lines`` lines long (its ``def`` line included)."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


def test_the_count_runs_from_the_def_line_to_the_last_line_of_methods_and_nested_functions_too():
    assert long_functions(_function("fits", 60), "m.py") == []
    assert long_functions(_function("long", 61), "m.py") == ["m.py:long:61"]
    method = "class C:\n    @property\n" + _function("method", 62, indent="    ")
    assert long_functions(method, "m.py") == ["m.py:method:62"]
    nested = "def outer():\n" + _function("inner", 61, indent="    ") + "    return inner\n"
    assert long_functions(nested, "m.py") == ["m.py:outer:63", "m.py:inner:61"]
    assert long_functions("async " + _function("co", 61), "m.py") == ["m.py:co:61"]


def test_no_function_in_tfmsr_is_longer_than_60_lines():
    found = []
    for dirpath, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    found += long_functions(fh.read(), os.path.relpath(path, os.path.dirname(ROOT)))
    assert not found, f"longer than {MAX_LINES} lines (split along their phases): {', '.join(sorted(found))}"
