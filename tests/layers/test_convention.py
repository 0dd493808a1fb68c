"""The call convention of tfmsr.layers (issue 26, item 5): every Layer subclass of tfmsr/layers and the
model-level blocks (Layer subclasses of tfmsr/ranking/models, tfmsr/retrieval/models; keras Models take a
feature dict and are not checked) takes each tensor as its own positional argument: its ``call`` never reads
a packed first argument (``inputs[0]``, ``a, b = inputs``, ``isinstance(inputs, list)``), and whatever
follows ``mask`` / ``training`` is a keyword-only argument or a flag with a constant default."""
import ast
import importlib
import inspect
import pkgutil
import textwrap

import tf_keras as keras

import tfmsr.layers
import tfmsr.ranking.models
import tfmsr.retrieval.models

PACKAGES = (tfmsr.layers, tfmsr.ranking.models, tfmsr.retrieval.models)
EXTRAS = ("mask", "training")


def layer_classes():
    """Every Layer subclass (not a Model) defined in the packages that defines its own ``call``."""
    found = {}
    for pkg in PACKAGES:
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if (cls.__module__ == module.__name__ and issubclass(cls, keras.layers.Layer)
                        and not issubclass(cls, keras.Model) and "call" in cls.__dict__):
                    found[f"{cls.__module__}.{cls.__name__}"] = cls
    return found


def _packed_reads(fn: ast.FunctionDef, first: str):
    """Lines where ``call`` reads its first argument as a container of inputs."""
    is_first = lambda n: isinstance(n, ast.Name) and n.id == first
    for node in ast.walk(fn):
        if isinstance(node, ast.Subscript) and is_first(node.value) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, int):
            yield node.lineno, f"{first}[{node.slice.value}]"
        elif isinstance(node, ast.Assign) and is_first(node.value) and isinstance(node.targets[0], (ast.Tuple, ast.List)):
            yield node.lineno, f"unpacks {first}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
                and is_first(node.args[0]):
            yield node.lineno, f"isinstance({first}, ...) (two call forms)"


def _late_arguments(fn: ast.FunctionDef):
    """Positional-or-keyword arguments after ``mask``/``training`` without a constant non-None default."""
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    names = [a.arg for a in args]
    first_extra = min((names.index(e) for e in EXTRAS if e in names), default=len(names))
    for arg, default in list(zip(args, defaults))[first_extra:]:
        flag = isinstance(default, ast.Constant) and default.value is not None
        if arg.arg not in EXTRAS and not flag:
            yield fn.lineno, f"argument '{arg.arg}' after {names[first_extra]}"


def violations(source: str, name: str):
    """``name:line: problem`` for the ``call`` method of the class in ``source``."""
    tree = ast.parse(textwrap.dedent(source))
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "call":
            first = fn.args.args[1].arg if len(fn.args.args) > 1 else None
            found = list(_packed_reads(fn, first)) if first else []
            out += [f"{name}:{line}: {what}" for line, what in sorted(found + list(_late_arguments(fn)))]
    return out


def test_every_layer_takes_its_tensors_as_positional_arguments():
    classes = layer_classes()
    assert len(classes) > 40 and "tfmsr.retrieval.models.sass.SASSTower" in classes
    found = [v for name, cls in sorted(classes.items()) for v in violations(inspect.getsource(cls), name)]
    assert found == [], "\n".join(found)


def test_the_check_finds_packed_inputs_two_forms_and_late_tensors():
    """The check can fail: a list-packed call, a two-form call and a tensor after ``training``."""
    packed = ("class A:\n    def call(self, inputs, mask=None):\n        q, k = inputs\n"
              "        return q * inputs[1]\n")
    assert violations(packed, "A") == ["A:3: unpacks inputs", "A:4: inputs[1]"]
    two_forms = "class B:\n    def call(self, x, mask=None):\n        return x[0] if isinstance(x, list) else x\n"
    assert violations(two_forms, "B") == ["B:3: isinstance(x, ...) (two call forms)", "B:3: x[0]"]
    late = "class C:\n    def call(self, x, training=False, own=None, flag=False, *, group=None):\n        return x\n"
    assert violations(late, "C") == ["C:2: argument 'own' after training"]
    fine = "class D:\n    def call(self, q, k, v=None, scenario=None, mask=None, training=False):\n        return q[:, 0]\n"
    assert violations(fine, "D") == []
