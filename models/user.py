"""A user's own model: `path/to/file.py:attr` or `package.module:attr`, made into a module.

`attr` is an `nn.Module` subclass, a factory returning a module, or a module
instance; `args` are passed to it as keyword arguments. Every failure is one
UserError line: a file or module that is missing or fails to import, an
attribute that does not exist (with what the file does define), a factory that
raises (with its message), a factory that returns something else.

A research repository often has its own top-level package named `models`, as
edge-export does. The user's code is imported with its own `models` (and
`runtime`, `export`) in view, then edge-export's are put back: both live in one
process, each code base seeing its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping

from runtime.errors import UserError

OWN_PACKAGES = ("models", "runtime", "export")


def parse_ref(ref: str) -> tuple[str, str]:
    """(file or module, attribute) of `file.py:attr` or `package.module:attr`."""
    where, sep, attr = ref.rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise UserError(f"--model {ref!r} is not FILE.py:NAME or package.module:NAME; expected e.g. "
                        "--model my_net.py:make_model or --model my_package.nets:UNet")
    return where, attr


def is_file_ref(where: str) -> bool:
    """Whether the part before ':' names a file (else an importable module)."""
    return where.endswith(".py") or "/" in where or "\\" in where


def _own(name: str) -> bool:
    return name.split(".", 1)[0] in OWN_PACKAGES


@contextlib.contextmanager
def foreign_code(folder: Path | None) -> Iterator[None]:
    """While importing and calling a user's code: edge-export's own top-level packages
    out of sys.modules and `folder` first on sys.path, so `import models` finds the
    user's; afterwards edge-export's are back (the user's modules stay reachable
    from the objects made with them)."""
    ours = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _own(k)]}
    if folder is not None:
        sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if folder is not None:
            sys.path.remove(str(folder))
        for key in [k for k in sys.modules if _own(k)]:
            del sys.modules[key]
        sys.modules.update(ours)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _where(err: BaseException, file: Path | None) -> str:
    """', line N' of the innermost frame in the user's file, where there is one."""
    if file is None:
        return ""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    return f" (line {frames[-1].lineno})" if frames else ""


def _definitions(module: Any) -> str:
    """What a user's module defines: its classes and functions, by name."""
    own = [(n, v) for n, v in vars(module).items() if not n.startswith("_")
           and getattr(v, "__module__", None) == module.__name__]
    classes = [n for n, v in own if inspect.isclass(v)]
    functions = [n for n, v in own if inspect.isfunction(v)]
    parts = ([f"classes {', '.join(classes)}"] if classes else []) + (
        [f"functions {', '.join(functions)}"] if functions else [])
    return "; ".join(parts) or "no classes or functions"


def load_attr(ref: str) -> tuple[Any, Path | None]:
    """The object `ref` names, and the file it came from (None for an installed package)."""
    where, attr = parse_ref(ref)
    if is_file_ref(where):
        file = Path(where).expanduser()
        if not file.is_file():
            raise UserError(f"--model file {str(file)!r} does not exist; expected a Python file "
                            "(FILE.py:NAME) or an importable module (package.module:NAME)")
        file = file.resolve()
        name = "edge_export_user_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        with foreign_code(file.parent):
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                sys.modules.pop(name, None)
                raise UserError(f"importing {str(file)!r} failed{_where(err, file)}: {_first_line(err)}") from None
        what = repr(str(file))
    else:
        with foreign_code(Path.cwd()):
            try:
                module = importlib.import_module(where)
            except ModuleNotFoundError as err:
                raise UserError(f"--model module {where!r} cannot be imported ({_first_line(err)}); install its "
                                "package, or name a file: --model path/to/file.py:NAME") from None
            except Exception as err:
                raise UserError(f"importing module {where!r} failed: {_first_line(err)}") from None
        file = None
        what = f"module {where!r}"
    if not hasattr(module, attr):
        raise UserError(f"{what} defines no {attr!r}; it defines: {_definitions(module)}")
    return getattr(module, attr), file


def make_module(ref: str, args: Mapping[str, Any] | None = None):
    """The `nn.Module` that `ref` names or makes (in eval mode)."""
    from torch import nn

    obj, file = load_attr(ref)
    args = dict(args or {})
    if isinstance(obj, nn.Module):
        if args:
            raise UserError(f"{ref} is a module instance; it takes no --model-arg ({', '.join(args)})")
        return obj.eval()
    if not callable(obj):
        raise UserError(f"{ref} is a {type(obj).__name__}, not a module class or a function that returns a module")
    shown = f"{ref}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    try:
        inspect.signature(obj).bind(**args)
    except TypeError as err:
        raise UserError(f"{shown} does not fit its signature {_signature(obj)}: {err}") from None
    except ValueError:
        pass
    with foreign_code(file.parent if file else Path.cwd()):
        try:
            module = obj(**args)
        except Exception as err:
            raise UserError(f"{shown} raised {_first_line(err)}{_where(err, file)}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{shown} returned a {type(module).__name__}; expected a torch.nn.Module")
    return module.eval()


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; values read as Python literals where they are one (3, 0.5, True, (1, 2), 'x'), else as text."""
    import ast

    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--model-arg {pair!r} is not KEY=VALUE; expected e.g. --model-arg classes=3")
        try:
            args[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args[key] = value
    return args
