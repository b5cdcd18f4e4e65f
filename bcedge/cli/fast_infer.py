"""``bcedge infer`` without pydantic: the cold-start path of a plain command line (issue #14 item 8).

typer (0.29 here) coerces every parameter's value through a pydantic ``TypeAdapter`` it builds
when the command runs, so a cold ``bcedge infer`` imported pydantic and built twelve adapters
before reading a single pixel (~220 ms of CPU of a ~1.5 s run, measured with ``os.wait4`` on
the busy 2-core machine; ``python -X importtime`` shows pydantic's tree as the largest part of
the CLI's own imports). The typer command object itself is cheap and pydantic-free to build,
and so is click's tokenizer, so this module:

1. builds the same click command typer runs (``typer.main.get_command`` of the same app);
2. tokenizes the arguments with click's own parser of that command (options before or after
   the scans, ``--opt=value``, ``-o DIR``, a repeated option's last value: exactly as typer);
3. converts each raw value itself, for the few kinds ``infer`` declares (str, int, float, flag,
   path, list of paths), with the declared ``min``/``max`` and typer's path checks.

Whatever it is not sure to convert exactly as typer would (``--help``, an unknown option, a
value such as ``--threads 0``, ``--threads 2.0`` or ``--threshold 1e-1``, a path check that
fails, a parameter with a callback or an environment variable, shell completion) makes
:func:`parse_infer` return None: the command line then goes through typer as before, with its
messages and exit codes. So the fast path changes the time, never the behaviour; the test
(``tests/test_cli_fast_infer.py``) compares its keyword arguments with those typer passes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

#: Values converted here; anything else goes to typer (pydantic's lax parsing accepts more, e.g. "1_000").
_INT = re.compile(r"[0-9]+\Z")
_FLOAT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")


class _Unsure(Exception):
    """This command line is left to typer."""


@dataclass
class FastInfer:
    """A parsed ``bcedge infer`` line, ready to run as click would run it.

    Attributes:
        root_ctx, ctx: click contexts of the ``bcedge`` group and of ``infer`` (``ctx.params``: its values).
        root_callback, callback: typer's callbacks of the group and of ``infer`` (wrapping ``_root`` and
            ``infer_command``).
        root_params: the group's values (``{"debug": ...}``).
    """

    root_ctx: Any
    ctx: Any
    root_callback: Callable[..., Any] | None
    callback: Callable[..., Any]
    root_params: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        """``infer``'s keyword arguments (what typer would pass)."""
        return dict(self.ctx.params)

    def run(self) -> Any:
        """The group's callback, then ``infer``'s, each through its context (``ctx.invoke``), as click does."""
        with self.root_ctx:
            if self.root_callback is not None:
                self.root_ctx.invoke(self.root_callback, **self.root_params)
            with self.ctx:
                return self.ctx.invoke(self.callback, **self.ctx.params)


def parse_infer(app: Any, args: list[str]) -> FastInfer | None:
    """Parse ``bcedge [--debug] infer ...`` as typer would, without pydantic; None when not sure.

    Args:
        app: the typer app that would run ``args`` (its root callback and its ``infer`` command).
        args: the command line after the program name.

    Returns:
        The parsed line (:meth:`FastInfer.run` runs it), or None: run the line through typer.
    """
    if any(key.startswith("_") and key.endswith("_COMPLETE") for key in os.environ):
        return None  # a shell-completion request: typer answers it
    try:
        import typer.main
        from typer import _click as click
    except ImportError:  # a typer without the vendored click: no fast path
        return None
    try:
        group = typer.main.get_command(app)
        root_ctx = click.Context(group, info_name="bcedge")
        root_opts, rest, _ = group.make_parser(root_ctx).parse_args(list(args))
        if not rest or rest[0] != "infer" or not isinstance(getattr(group, "commands", None), dict):
            return None
        command = group.commands.get("infer")
        if command is None or command.callback is None:
            return None
        ctx = click.Context(command, info_name="infer", parent=root_ctx)
        opts, extra, _ = command.make_parser(ctx).parse_args(rest[1:])
        if extra:
            return None
        root_params = _convert(group.params, root_opts)
        ctx.params = _convert(command.params, opts)
    except (_Unsure, click.ClickException, AttributeError, TypeError, ValueError):
        # ClickException: a usage error (typer says it); the others: a typer whose internals differ.
        return None
    root_ctx.params = dict(root_params)
    return FastInfer(root_ctx, ctx, group.callback, command.callback, root_params)


def _convert(params: list[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the callback from click's raw values; _Unsure when not certain."""
    known = {p.name for p in params}
    if set(raw) - known:
        raise _Unsure  # --help and the like
    kwargs: dict[str, Any] = {}
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        info = getattr(descriptor, "parameter_info", None)
        if descriptor is None or info is None or param.callback is not None or param.envvar or param.is_eager:
            raise _Unsure
        if getattr(info, "callback", None) is not None or getattr(info, "parser", None) is not None:
            raise _Unsure
        if param.name not in raw:
            if param.required:
                raise _Unsure  # typer says what is missing
            kwargs[param.name] = _default(param)
            continue
        kwargs[param.name] = _value(descriptor.annotation, info, raw[param.name], param)
    return kwargs


def _default(param: Any) -> Any:
    """The parameter's default when it is not given: the function's own default (typer's ``Annotated`` style)."""
    default = param.default
    if callable(default) or (default is not None and not isinstance(default, (str, int, float, bool, Path))):
        raise _Unsure
    return default


def _value(annotation: Any, info: Any, raw: Any, param: Any) -> Any:
    """One parameter's value from its raw string(s)."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if not isinstance(raw, (list, tuple)) or not raw:
            raise _Unsure
        return [_leaf(item, info, value) for value in raw]
    if annotation is bool:
        if getattr(param, "is_flag", False) and raw is True:
            return True
        raise _Unsure
    if isinstance(raw, (list, tuple)):
        raise _Unsure
    return _leaf(annotation, info, raw)


def _leaf(annotation: Any, info: Any, raw: Any) -> Any:
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise _Unsure
    if annotation is str:
        return raw
    if annotation is int or annotation is float:
        if getattr(info, "clamp", False):
            raise _Unsure
        if not (_INT if annotation is int else _FLOAT).match(raw):
            raise _Unsure
        value = annotation(raw)
        low, high = getattr(info, "min", None), getattr(info, "max", None)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Unsure  # typer's range message
        return value
    if annotation is Path:
        return _path(info, raw)
    raise _Unsure


def _path(info: Any, raw: str) -> Path:
    """``Path(raw)`` after typer's checks (``exists``, ``file_okay``, ``dir_okay``, ``readable``, ``writable``)."""
    if getattr(info, "resolve_path", False) or getattr(info, "path_type", None) not in (None, Path):
        raise _Unsure
    if getattr(info, "allow_dash", False) and raw == "-":
        raise _Unsure
    try:
        st = os.stat(raw)
    except OSError:
        if getattr(info, "exists", False):
            raise _Unsure from None
        return Path(raw)
    if (not getattr(info, "file_okay", True) and stat.S_ISREG(st.st_mode)) or (
        not getattr(info, "dir_okay", True) and stat.S_ISDIR(st.st_mode)
    ):
        raise _Unsure
    if (getattr(info, "readable", True) and not os.access(raw, os.R_OK)) or (
        getattr(info, "writable", False) and not os.access(raw, os.W_OK)
    ):
        raise _Unsure
    return Path(raw)


__all__ = ["FastInfer", "parse_infer"]
