"""``--model module.path:factory``: the command line's way to a user's own model.

A spec names a Python callable the way ``python -m`` and packaging entry points do: the dotted import path of a
module, a colon, and the (dotted) name of a function in it that takes no arguments and returns a
:class:`jaxcam.Model` (built by ``Model.from_tapped``, ``jaxcam.load_model`` or an adapter such as
``jaxcam.from_linen``). The current directory is put first on ``sys.path`` while the module is imported and the
factory called, as ``python -m`` does, so ``--model my_models:build`` finds ``./my_models.py``; it is taken off
again afterwards. Every way this can fail is one :class:`ModelFactoryError` naming the spec and the fix: a spec
that is not one, a module that cannot be found or fails to import, a missing attribute (with the closest names),
something that is not callable or needs arguments, a factory that raises, or one that returns something else.

Importing a module runs its code: a spec is trusted input, like a script given to ``python``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys

from ..errors import JaxcamError, closest

EXAMPLE = "mypkg.models:build"


class ModelFactoryError(JaxcamError, ValueError):
    """A ``--model module.path:factory`` that does not give a model; the message names the spec and the fix."""


def is_factory_spec(name: str) -> bool:
    """Whether a ``--model`` value is a factory spec rather than a built-in or stored model name (those never
    hold a colon: the store refuses ``a:b`` as a drive-letter path, and converted names are ``arch-<hash>``)."""
    return ":" in name


def parse_spec(spec: str) -> tuple[str, str]:
    """``(module path, attribute path)`` of ``module.path:factory``; ModelFactoryError when it is not that shape."""
    module, sep, attr = spec.partition(":")
    if not (sep and _dotted(module) and _dotted(attr)):
        path = module.endswith(".py") or "/" in module or "\\" in module
        hint = (f" ({module!r} is a file path: name the module as an import path, e.g. "
                f"{_as_module(module)}:{attr or 'build'})") if path else ""
        raise ModelFactoryError(f"--model {spec!r} is not a factory spec{hint}: write module.path:factory, a module's "
                                f"dotted import path, a colon and the name of a function in it that returns a "
                                f"jaxcam.Model (e.g. {EXAMPLE}); built-in names have no colon (`jaxcam models` lists "
                                "them)")
    return module, attr


def _as_module(path: str) -> str:
    """``tests/user_models.py`` as the import path ``tests.user_models`` (for a hint only)."""
    stem = path[:-3] if path.endswith(".py") else path
    return ".".join(p for p in stem.replace("\\", "/").split("/") if p not in ("", "."))


def _dotted(path: str) -> bool:
    return bool(path) and all(part.isidentifier() for part in path.split("."))


@contextlib.contextmanager
def cwd_on_path():
    """The current directory first on ``sys.path`` for the block (as ``python -m`` puts it), then removed again
    unless it was already there."""
    cwd = os.getcwd()
    present = any(os.path.abspath(p or os.curdir) == cwd for p in sys.path)
    if not present:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if not present and cwd in sys.path:
            sys.path.remove(cwd)


def load_factory(spec: str):
    """The :class:`jaxcam.Model` that ``module.path:factory`` returns, or one ModelFactoryError saying why not."""
    module_path, attr_path = parse_spec(spec)
    with cwd_on_path():
        module = _import(spec, module_path)
        factory = _attribute(spec, module, module_path, attr_path)
        _check_callable(spec, factory, f"{module_path}.{attr_path}")
        model = _call(spec, factory, f"{module_path}.{attr_path}")
    return _check_model(spec, model, f"{module_path}.{attr_path}()")


def _import(spec: str, module_path: str):
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_path == missing or module_path.startswith(missing + ".")):
            where = module_path.replace(".", os.sep)
            raise ModelFactoryError(
                f"--model {spec!r}: no module named {missing!r}; the module must be importable: {where}.py (or a "
                f"package folder {where}) in the current directory {os.getcwd()!r}, on PYTHONPATH, or "
                "installed") from exc
        raise ModelFactoryError(f"--model {spec!r}: importing {module_path!r} failed because a module it imports is "
                                f"missing ({exc}): install it, or fix that import") from exc
    except Exception as exc:  # the user's module: any error at import is theirs to fix
        raise ModelFactoryError(f"--model {spec!r}: importing {module_path!r} raised {_describe(exc)}; fix the module "
                                "(--debug shows the traceback)") from exc


def _attribute(spec: str, module, module_path: str, attr_path: str):
    obj = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_path, *attr_path.split(".")[:i]])
            names = _callables(obj)
            near = closest(part, names)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none"
            raise ModelFactoryError(f"--model {spec!r}: {owner} has no attribute {part!r}{hint}; its functions and "
                                    f"classes: {listed}")
        obj = getattr(obj, part)
    return obj


def _callables(obj) -> list[str]:
    """The public callables ``obj`` defines (for a module: those whose ``__module__`` is it, not its imports)."""
    own = getattr(obj, "__name__", None) if inspect.ismodule(obj) else None
    names = []
    for name in sorted(vars(obj) if hasattr(obj, "__dict__") else dir(obj)):
        value = getattr(obj, name, None)
        if name.startswith("_") or not callable(value):
            continue
        if own is None or getattr(value, "__module__", own) == own:
            names.append(name)
    return names


def _check_callable(spec: str, factory, qualname: str) -> None:
    if not callable(factory):
        raise ModelFactoryError(f"--model {spec!r}: {qualname} is {_a(type(factory).__name__)}, not a callable: name a "
                                "function of no arguments that returns a jaxcam.Model")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none; calling them tells
        return
    required = [p.name for p in signature.parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise ModelFactoryError(f"--model {spec!r}: {qualname}{signature} needs the argument(s) {', '.join(required)}, "
                                "and --model calls it with none: give them defaults, or name a function of no "
                                "arguments that calls it with yours")


def _call(spec: str, factory, qualname: str):
    try:
        return factory()
    except Exception as exc:  # the user's code: whatever it raises is one line naming it
        raise ModelFactoryError(f"--model {spec!r}: {qualname}() raised {_describe(exc)}; fix the factory "
                                "(--debug shows the traceback)") from exc


def _check_model(spec: str, model, call: str):
    from ..models.model import Model
    from ..tapped import Tapped

    if isinstance(model, Model):
        return model
    if isinstance(model, Tapped):
        fix = "a Tapped holds no parameters: return jaxcam.Model.from_tapped(tapped, params, input_size=..., ...)"
    else:
        fix = ("return jaxcam.Model.from_tapped(tapped, params, ...), jaxcam.load_model(...) or an adapter's model "
               "(jaxcam.from_linen, from_nnx, from_hf, from_equinox, from_function)")
    raise ModelFactoryError(f"--model {spec!r}: {call} returned {_a(type(model).__name__)}, not a jaxcam.Model: {fix}")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
