"""Which names a cell reads from the notebook and which it binds.

A remote run only sees what we send it, so the package needs the cell's free
variables (its inputs) and the names it binds (its default outputs). This is
worked out from the syntax tree, never by pattern matching on text: strings,
comments and attribute names must not count as variables.

The analysis follows execution order at module level, because a name that the
cell binds before it reads it need not be sent. Only bindings that happen on
every path count as "bound" for later reads (an ``if`` without ``else`` may
not run, a loop body may run zero times), so a read after them is still sent
when the notebook has the name: sending a value too many is cheap, a missing
one is a ``NameError`` on the worker.
"""

from __future__ import annotations

import ast
import builtins
import dis
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["CellNames", "cell_names", "check_syntax"]

# ``display`` is provided by the sandbox runtime; IPython's own injections are
# not builtins of a plain interpreter, so they never count as such.
_BUILTINS = (frozenset(dir(builtins)) | {"display"}) - {"get_ipython", "__IPYTHON__"}

_FLAGS_CODE = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_FLAGS = ast.PyCF_ONLY_AST | _FLAGS_CODE

# IPython's line syntax: %magic, %%cell_magic, !shell, x = !shell, x = %magic, obj? and ?obj.
_MAGIC = re.compile(r"^\s*(%%?[A-Za-z_]|![^=]|[\w.,\s\[\]*]+=\s*[!%]\S)")
_HELP = re.compile(r"^\s*(\?\??[\w.]+|[\w.]+\?\??)\s*$")


@dataclass(frozen=True)
class CellNames:
    """The names a cell reads from outside itself and the names it binds.

    ``reads`` are in first-use order and exclude builtins; ``builtins`` lists
    the builtin names the cell reads, so a caller can still send a notebook
    variable that shadows one (``max = 3`` in an earlier cell).
    """

    reads: tuple[str, ...]
    assigns: tuple[str, ...]
    builtins: tuple[str, ...] = ()


def check_syntax(code: str) -> None:
    """Raise ``UsageError`` when the cell cannot compile, before anything is sent.

    IPython syntax (magics, ``!shell`` lines, ``obj?``) gets its own sentence:
    the worker runs plain Python, so those lines cannot run there.
    """
    _parse(code)
    try:
        compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:  # the compiler's own checks: 'return' outside function and the like
        raise _syntax_error(exc) from None


def cell_names(code: str) -> CellNames:
    """The cell's inputs and outputs, from its syntax tree.

    >>> cell_names("y = x + 1\\nprint(y)")
    CellNames(reads=('x',), assigns=('y',), builtins=('print',))
    """
    check_syntax(code)  # nested scopes are compiled alone below; the whole cell must compile
    tree = _parse(code)
    flow = _ModuleFlow(future_annotations=_has_future_annotations(tree))
    flow.run(tree.body)
    assigned = set(flow.assigns)  # module-level statements only: a function's ``global`` may never run
    reads: dict[str, None] = {}
    used_builtins: dict[str, None] = {}
    for name, deferred in flow.reads:
        # A function body runs when called, normally after the cell bound what
        # it binds; so a name it reads is an input only if the cell never binds it.
        if deferred and name in assigned:
            continue
        if (
            name.startswith("__") and name in _BUILTINS
        ):  # __name__ & co. belong to the module, not to the notebook
            continue
        (used_builtins if name in _BUILTINS else reads)[name] = None
    assigns = list(flow.assigns) + [n for n in flow.global_writes if n not in assigned]
    return CellNames(tuple(reads), tuple(dict.fromkeys(assigns)), tuple(used_builtins))


def _parse(code: str) -> ast.Module:
    try:
        tree: ast.Module = compile(code, "<cell>", "exec", flags=_FLAGS, dont_inherit=True)
        return tree
    except SyntaxError as exc:
        magic = _ipython_line(code)
        if magic is not None:
            lineno, text = magic
            raise UsageError(
                f"Line {lineno} of the cell is {_ipython_kind(text)} ({text.strip()[:60]}), which cannot run on a worker: "
                "remove it or run it in a local cell (nothing was sent)."
            ) from None
        raise _syntax_error(exc) from None
    except ValueError as exc:  # source with NUL bytes
        raise UsageError(
            f"The cell cannot be compiled: {exc}; fix it before running (nothing was sent)."
        ) from None


def _ipython_kind(line: str) -> str:
    squeezed = line.replace(" ", "").replace("\t", "")
    if squeezed.startswith("!") or "=!" in squeezed:
        return "a shell command"
    if _HELP.match(line):
        return "IPython help syntax"
    return "an IPython magic"


def _syntax_error(exc: SyntaxError) -> UsageError:
    return UsageError(
        f"The cell has a syntax error at line {exc.lineno or 1}: {exc.msg}; fix it before running (nothing was sent)."
    )


def _ipython_line(code: str) -> tuple[int, str] | None:
    """The first IPython-only line, if blanking such lines makes the cell parse."""
    lines = code.splitlines()
    hits = [i for i, line in enumerate(lines) if _MAGIC.match(line) or _HELP.match(line)]
    if not hits:
        return None
    patched = list(lines)
    for i in hits:
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        patched[i] = indent + "pass"
    try:
        compile("\n".join(patched), "<cell>", "exec", flags=_FLAGS, dont_inherit=True)
    except SyntaxError:
        return None
    return hits[0] + 1, lines[hits[0]]


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class _ModuleFlow:
    """Walks module-level (or class-body) statements in execution order.

    ``bound`` holds the names bound on every path so far; ``reads`` collects
    ``(name, deferred)`` for names read while not bound; ``assigns`` is every
    name the code may bind, in first-binding order. A class body is a nested
    flow whose misses fall through to the module, as Python resolves them.
    """

    def __init__(self, future_annotations: bool, parent: _ModuleFlow | None = None) -> None:
        self.bound: set[str] = set()
        self.reads: list[tuple[str, bool]] = [] if parent is None else parent.reads
        self.assigns: list[str] = []
        self.global_writes: list[str] = [] if parent is None else parent.global_writes
        self.future_annotations = future_annotations
        self.parent = parent

    # -- names ------------------------------------------------------------
    def read(self, name: str, deferred: bool = False) -> None:
        if name in self.bound:
            return
        if self.parent is not None:
            self.parent.read(name, deferred)
        else:
            self.reads.append((name, deferred))

    def bind(self, name: str) -> None:
        self.bound.add(name)
        if name in self.assigns:
            return
        self.assigns.append(name)

    def unbind(self, name: str) -> None:
        if name not in self.bound:
            self.read(name)  # ``del x`` needs x to exist
        self.bound.discard(name)
        if name in self.assigns:
            self.assigns.remove(name)

    # -- statements -------------------------------------------------------
    def run(self, body: Iterable[ast.stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def branch(self, body: Iterable[ast.stmt], start: set[str]) -> set[str]:
        """Run one path from ``start``; return what is bound at its end."""
        self.bound = set(start)
        self.run(body)
        return self.bound

    def stmt(self, node: ast.stmt) -> None:
        method: Callable[[ast.stmt], None] | None = getattr(self, "s_" + type(node).__name__, None)
        if method is not None:
            method(node)
        else:  # Expr, Return, Raise, Assert, Pass, Global...: expressions only
            self.exprs(ast.iter_child_nodes(node))

    def s_Assign(self, node: ast.Assign) -> None:
        self.expr(node.value)
        for target in node.targets:
            self.target(target)

    def s_AugAssign(self, node: ast.AugAssign) -> None:
        self.expr(node.value)
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
            self.bind(node.target.id)
        else:
            self.expr(node.target)

    def s_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.expr(node.value)
        if not self.future_annotations and isinstance(node.target, ast.Name):
            self.expr(node.annotation)
        if node.value is not None:
            self.target(node.target)
        elif not isinstance(node.target, ast.Name):
            self.expr(node.target)

    def s_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.unbind(target.id)
            elif isinstance(target, (ast.Tuple, ast.List)):
                self.s_Delete(ast.Delete(targets=target.elts))
            else:
                self.expr(target)

    def s_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.expr(node.iter)
        start = set(self.bound)
        self.bound = set(start)
        self.target(node.target)
        self.run(node.body)
        self.branch(node.orelse, start)
        self.bound = start  # the body may run zero times

    s_AsyncFor = s_For

    def s_While(self, node: ast.While) -> None:
        self.expr(node.test)
        start = set(self.bound)
        self.branch(node.body, start)
        self.branch(node.orelse, start)
        self.bound = start

    def s_If(self, node: ast.If) -> None:
        self.expr(node.test)
        start = set(self.bound)
        then = self.branch(node.body, start)
        other = self.branch(node.orelse, start)
        self.bound = then & other

    def s_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.expr(item.context_expr)
            if item.optional_vars is not None:
                self.target(item.optional_vars)
        self.run(node.body)

    s_AsyncWith = s_With

    def s_Try(self, node: ast.Try) -> None:
        start = set(self.bound)
        ends = [self.branch(list(node.body) + list(node.orelse), start)]
        for handler in node.handlers:
            self.bound = set(start)
            if handler.type is not None:
                self.expr(handler.type)
            if handler.name:
                self.bind(handler.name)
            self.run(handler.body)
            self.bound.discard(handler.name or "")  # Python deletes it when the handler ends
            ends.append(self.bound)
        self.bound = set.intersection(*ends)
        self.run(node.finalbody)

    s_TryStar = s_Try

    def s_Match(self, node: ast.Match) -> None:
        self.expr(node.subject)
        start = set(self.bound)
        ends = [start]  # no case may match
        for case in node.cases:
            self.bound = set(start)
            self.pattern(case.pattern)
            if case.guard is not None:
                self.expr(case.guard)
            self.run(case.body)
            ends.append(self.bound)
        self.bound = set.intersection(*ends)

    def s_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bind(alias.asname or alias.name.split(".")[0])

    s_ImportFrom = s_Import

    def s_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.exprs(node.decorator_list)
        self.signature(node.args)
        if not self.future_annotations and node.returns is not None:
            self.expr(node.returns)
        self.deferred(node)
        self.bind(node.name)

    s_AsyncFunctionDef = s_FunctionDef

    def s_ClassDef(self, node: ast.ClassDef) -> None:
        self.exprs(node.decorator_list)
        self.exprs(node.bases)
        self.exprs(k.value for k in node.keywords)
        body = _ModuleFlow(self.future_annotations, parent=self)
        body.run(node.body)
        self.bind(node.name)

    # -- expressions ------------------------------------------------------
    def exprs(self, nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            self.expr(node)

    def expr(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.read(node.id)
            else:
                self.bind(node.id)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value)
            self.bind(node.target.id)
        elif isinstance(node, ast.Lambda):
            self.signature(node.args)
            self.deferred(node)
        elif isinstance(node, _COMPREHENSIONS):
            self.comprehension(node)
        elif isinstance(node, ast.expr_context):
            return
        else:
            self.exprs(ast.iter_child_nodes(node))

    def target(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self.bind(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Starred):
            self.target(node.value)
        else:  # x.attr = / x[i] = : reads x (and i)
            self.expr(node)

    def pattern(self, node: ast.AST) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.MatchAs, ast.MatchStar)) and sub.name:
                self.bind(sub.name)
            elif isinstance(sub, ast.MatchMapping):
                self.exprs(sub.keys)
                if sub.rest:
                    self.bind(sub.rest)
            elif isinstance(sub, ast.MatchValue):
                self.expr(sub.value)
            elif isinstance(sub, ast.MatchClass):
                self.expr(sub.cls)

    def signature(self, args: ast.arguments) -> None:
        """Defaults and annotations are evaluated when the ``def`` runs."""
        self.exprs(args.defaults)
        self.exprs(d for d in args.kw_defaults if d is not None)
        if not self.future_annotations:
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            self.exprs(a.annotation for a in every if a is not None and a.annotation is not None)

    def deferred(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        reads, global_writes = _nested_scope_names(node)
        for name in reads:
            self.module().read(name, deferred=True)  # the class scope is invisible to function bodies
        self.global_writes.extend(global_writes)

    def module(self) -> _ModuleFlow:
        return self if self.parent is None else self.parent.module()

    def comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        # The first iterable is evaluated here; the rest runs in the comprehension's scope now.
        self.expr(node.generators[0].iter)
        reads, walrus = _nested_scope_names(node)
        scope = self.module()  # like a function body, a comprehension cannot see class-level names
        for name in reads:
            scope.read(name)
        for name in walrus:
            self.bind(name)


def _nested_scope_names(node: ast.stmt | ast.expr) -> tuple[list[str], list[str]]:
    """Module-level names a nested scope reads and stores, as CPython resolves them.

    Compiling the node alone and reading its bytecode gives scoping exactly as
    the interpreter applies it (``global``, ``nonlocal``, class bodies,
    comprehensions) without re-implementing those rules.
    """
    module_code = None
    if isinstance(node, ast.stmt):
        top = compile(
            ast.Module(body=[node], type_ignores=[]), "<cell>", "exec", flags=_FLAGS_CODE, dont_inherit=True
        )
        stack = [c for c in top.co_consts if isinstance(c, types.CodeType)]  # the body, not decorators
    else:  # a lambda or a comprehension: its outer code runs at module level
        module_code = compile(
            ast.Expression(body=node), "<cell>", "eval", flags=_FLAGS_CODE, dont_inherit=True
        )
        stack = [module_code]
    reads: dict[str, None] = {}
    stores: dict[str, None] = {}
    while stack:
        code = stack.pop()
        ops = [(ins.opname, ins.argval) for ins in dis.get_instructions(code)]
        at_module = code is module_code
        # Outside module code, *_NAME ops only appear in class bodies, where a
        # name the class itself stores is class-local.
        class_locals = set() if at_module else {arg for op, arg in ops if op == "STORE_NAME"}
        for op, arg in ops:
            if op == "LOAD_GLOBAL" or (op == "LOAD_NAME" and arg not in class_locals):
                reads.setdefault(arg)
            elif op == "STORE_GLOBAL" or (op == "STORE_NAME" and at_module):
                stores.setdefault(arg)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return list(reads), list(stores)
