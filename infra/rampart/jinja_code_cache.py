"""Jinja's compiled templates, shared by the forked workers of one ansible-playbook run.

ansible-core compiles every template it renders (no compile cache), and it renders in the worker it forks for each
task on each host, which exits afterwards. So the same few hundred templates (role vars, task arguments, `when`
conditions, template files) were compiled again for every task on every host: a site.yml no-op on the lab compiled
558 distinct sources 4,650 times, 12.3 s of the controller's CPU in a run of about 60 s.

`install(directory)` makes Jinja keep what it compiles as files in `directory`, one per distinct input, and read
them back instead of compiling again. This is the mechanism of Jinja's own bytecode cache (a marshalled code
object per source), which covers only templates loaded by name. The key is everything the compiler reads: the
source, template name and file name, and the environment's syntax settings, class and code generator, and
ansible-core's backslash-escaping context. The directory is per run (inside Ansible's own 0700 local temp
directory, removed when the run ends), so the Ansible, Jinja and Python versions and the configuration never
change under it. A file that cannot be read back is compiled again and replaced, never trusted.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import marshal
import os
import types
from collections.abc import Callable
from typing import Any

import jinja2

# The expression compile_expression() is compiling: Jinja hands compile() a node tree built from it, not a string.
_expression: contextvars.ContextVar[str | None] = contextvars.ContextVar("rampart_jinja_expression", default=None)

# The environment settings that change what the lexer, parser or code generator produce.
_SETTINGS = (
    "block_start_string", "block_end_string", "variable_start_string", "variable_end_string",
    "comment_start_string", "comment_end_string", "line_statement_prefix", "line_comment_prefix",
    "trim_blocks", "lstrip_blocks", "newline_sequence", "keep_trailing_newline", "optimized", "is_async",
)  # fmt: skip


# ansible-core's lexer escapes backslashes in expressions only inside this context, so it is part of the key.
try:
    from ansible._internal._templating._jinja_bits import _TemplateCompileContext
except ImportError:  # a release that moved it: no cache (install() does nothing) rather than a key missing it
    _TemplateCompileContext = None


def _escaping_backslashes() -> bool:
    ctx = _TemplateCompileContext.current(optional=True)
    return bool(ctx and ctx.escape_backslashes)


def cache_key(env: jinja2.Environment, kind: str, source: str, name: str | None, filename: str | None,
              defer_init: bool) -> str:  # fmt: skip
    settings = tuple(getattr(env, field) for field in _SETTINGS)
    generator = env.code_generator_class
    finalize = getattr(env.finalize, "__qualname__", repr(env.finalize))
    inputs = (kind, source, name, filename, defer_init, type(env).__module__, type(env).__qualname__,
              generator.__module__, generator.__qualname__, settings, tuple(sorted(env.extensions)),
              repr(env.autoescape), finalize, _escaping_backslashes())  # fmt: skip
    return hashlib.sha256(repr(inputs).encode()).hexdigest()


def _load(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            # Written by this run's own workers into its 0700 directory, and only ever a code object (checked).
            return marshal.load(f)  # noqa: S302
    except (OSError, EOFError, ValueError, TypeError):  # absent, or not a complete marshalled object
        return None


def _store(path: str, code: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            marshal.dump(code, f)
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError:  # a full disk only costs the next compile
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def install(directory: str) -> Callable[[], None]:
    """Cache compiled templates in `directory` (made 0700 if absent). Returns the function that undoes it.
    Installing twice in one process keeps the first directory."""
    if _TemplateCompileContext is None or getattr(jinja2.Environment.compile, "rampart_cache", None):
        return lambda: None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    compile_ = jinja2.Environment.compile
    compile_expression = jinja2.Environment.compile_expression

    def cached_compile(self, source, name=None, filename=None, raw=False, defer_init=False):  # type: ignore[no-untyped-def]
        kind, text = ("template", source) if isinstance(source, str) else ("expression", _expression.get())
        if raw or text is None:
            return compile_(self, source, name, filename, raw, defer_init)
        path = os.path.join(directory, cache_key(self, kind, text, name, filename, defer_init))
        code = _load(path)
        if type(code) is not types.CodeType:  # absent or unreadable: compile, and replace the file
            code = compile_(self, source, name, filename, raw, defer_init)
            _store(path, code)
        return code

    def cached_compile_expression(self, source, *args, **kwargs):  # type: ignore[no-untyped-def]
        token = _expression.set(source)
        try:
            return compile_expression(self, source, *args, **kwargs)
        finally:
            _expression.reset(token)

    cached_compile.rampart_cache = directory  # type: ignore[attr-defined]
    jinja2.Environment.compile = cached_compile  # type: ignore[method-assign]
    jinja2.Environment.compile_expression = cached_compile_expression  # type: ignore[method-assign]

    def uninstall() -> None:
        jinja2.Environment.compile = compile_  # type: ignore[method-assign]
        jinja2.Environment.compile_expression = compile_expression  # type: ignore[method-assign]

    return uninstall
