"""Which names a cell reads from the notebook and which it binds."""

from __future__ import annotations

import pytest

from decloud_magics.analysis import CellNames, cell_names, check_syntax
from decloud_magics.errors import UsageError


def reads(code: str) -> tuple[str, ...]:
    return cell_names(code).reads


def assigns(code: str) -> tuple[str, ...]:
    return cell_names(code).assigns


def test_plain_read_and_assign_in_first_use_order() -> None:
    assert cell_names("y = b + a\nz = a * y\nprint(z)") == CellNames(("b", "a"), ("y", "z"), ("print",))


def test_name_bound_before_it_is_read_is_not_an_input() -> None:
    assert reads("x = 1\ny = x + 1") == ()


def test_read_before_rebinding_is_an_input() -> None:
    assert reads("x = x + 1") == ("x",)
    assert assigns("x = x + 1") == ("x",)


def test_augmented_assignment_reads_unbound_target() -> None:
    assert cell_names("total += step") == CellNames(("step", "total"), ("total",), ())
    assert reads("total = 0\ntotal += 1") == ()


def test_builtins_are_listed_apart() -> None:
    names = cell_names("n = len(data) + max(data)")
    assert names.reads == ("data",)
    assert names.builtins == ("len", "max")


def test_display_is_provided_remotely() -> None:
    assert reads("display(df)") == ("df",)


def test_strings_comments_and_attributes_are_not_names() -> None:
    code = "# uses hidden\ns = 'hidden'\nt = obj.hidden\n"
    assert reads(code) == ("obj",)


def test_annotated_assignment() -> None:
    assert cell_names("x: int = y") == CellNames(("y",), ("x",), ("int",))
    assert assigns("x: int") == ()  # no value, no binding


def test_future_annotations_are_not_evaluated() -> None:
    assert reads("from __future__ import annotations\nx: Foo = 1") == ()


def test_tuple_star_and_nested_targets() -> None:
    assert assigns("a, (b, *c) = d") == ("a", "b", "c")
    assert reads("a, (b, *c) = d") == ("d",)


def test_attribute_and_subscript_targets_read_their_object() -> None:
    names = cell_names("df['x'] = col\nobj.attr = 1")
    assert names.reads == ("col", "df", "obj")
    assert names.assigns == ()


def test_for_target_and_body() -> None:
    names = cell_names("for i in items:\n    acc = i\n")
    assert names.reads == ("items",)
    assert names.assigns == ("i", "acc")


def test_loop_body_may_not_run_so_later_reads_are_inputs() -> None:
    assert reads("for i in items:\n    last = i\nprint(last)") == ("items", "last")


def test_if_else_binding_on_both_paths_is_bound() -> None:
    assert reads("if c:\n    v = 1\nelse:\n    v = 2\nprint(v)") == ("c",)


def test_if_without_else_leaves_name_possibly_unbound() -> None:
    assert reads("if c:\n    v = 1\nprint(v)") == ("c", "v")


def test_while_loop() -> None:
    assert cell_names("while n > 0:\n    n -= 1\n") == CellNames(("n",), ("n",), ())


def test_with_target() -> None:
    names = cell_names("with open(path) as fh:\n    text = fh.read()\nprint(text)")
    assert names.reads == ("path",)
    assert names.assigns == ("fh", "text")


def test_except_target_and_try_paths() -> None:
    names = cell_names("try:\n    r = f()\nexcept ValueError as err:\n    print(err)\n")
    assert names.reads == ("f",)
    assert names.assigns == ("r", "err")
    assert names.builtins == ("ValueError", "print")


def test_try_finally_binds() -> None:
    assert reads("try:\n    pass\nfinally:\n    done = 1\nprint(done)") == ()


def test_walrus_at_module_level() -> None:
    names = cell_names("if (n := len(xs)) > 3:\n    print(n)")
    assert names.reads == ("xs",)
    assert names.assigns == ("n",)


def test_walrus_in_comprehension_binds_module_name() -> None:
    names = cell_names("ys = [last := f(x) for x in xs]")
    assert "last" in names.assigns and "ys" in names.assigns
    assert names.reads == ("xs", "f")


def test_imports_bind_names() -> None:
    names = cell_names("import os.path\nimport numpy as np\nfrom math import pi as PI, tau\n")
    assert names.assigns == ("os", "np", "PI", "tau")
    assert names.reads == ()


def test_star_import_binds_nothing_known() -> None:
    assert assigns("from math import *") == ()


def test_def_and_class_bind_their_names() -> None:
    assert assigns("def f():\n    pass\nclass C:\n    pass") == ("f", "C")


def test_del_removes_assignment() -> None:
    assert assigns("tmp = 1\nkeep = 2\ndel tmp") == ("keep",)


def test_del_of_notebook_name_needs_it() -> None:
    assert reads("del old") == ("old",)


def test_function_body_free_names_are_inputs() -> None:
    assert reads("def f(x):\n    return x * scale + offset\n") == ("scale", "offset")


def test_function_reading_name_the_cell_binds_later_is_not_an_input() -> None:
    assert reads("def f():\n    return scale\nscale = 2\nr = f()") == ()


def test_recursive_function_is_not_its_own_input() -> None:
    assert reads("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\nr = fact(k)") == ("k",)


def test_function_locals_params_and_closures_are_not_inputs() -> None:
    code = (
        "def outer(a, *args, b=1, **kw):\n"
        "    c = a + b\n"
        "    def inner():\n"
        "        nonlocal c\n"
        "        return c + args[0] + kw['x'] + free\n"
        "    return inner\n"
    )
    assert reads(code) == ("free",)


def test_defaults_decorators_and_annotations_are_read_at_def_time() -> None:
    code = "@deco(arg)\ndef g(x=dflt, *, y: Ann = 2) -> Ret:\n    return h(x)\n"
    assert reads(code) == ("deco", "arg", "dflt", "Ann", "Ret", "h")


def test_global_statement_in_function() -> None:
    names = cell_names("def bump():\n    global counter\n    counter += 1\nbump()")
    assert names.reads == ("counter",)
    assert names.assigns == ("bump", "counter")


def test_lambda_body() -> None:
    assert reads("f = lambda x, k=dflt: x + shift") == ("dflt", "shift")


def test_comprehension_scopes() -> None:
    # execution order: the condition runs before the element expression
    assert cell_names("ys = [x * factor for x in xs if x > lo]") == CellNames(
        ("xs", "lo", "factor"), ("ys",), ()
    )
    assert reads("pairs = {k: v for k, v in d.items()}") == ("d",)
    assert reads("g = sum(x for x in range(n))") == ("n",)
    assert reads("m = [[i * j for j in row] for i, row in rows]") == ("rows",)


def test_comprehension_variable_does_not_leak() -> None:
    assert reads("ys = [x for x in xs]\nprint(x)") == ("xs", "x")


def test_class_body_names() -> None:
    code = "class A(Base):\n    y = 1\n    z = y + w\n    def m(self):\n        return A, q, y\n"
    names = cell_names(code)
    # y inside the method is the module's y, not the class attribute: Python skips class scope.
    assert names.reads == ("Base", "w", "q", "y")
    assert names.assigns == ("A",)


def test_match_statement() -> None:
    code = (
        "match cmd:\n"
        "    case Point(x=0, y=py):\n"
        "        r = py\n"
        "    case {'k': val, **rest}:\n"
        "        r = val\n"
        "    case [first, *others]:\n"
        "        r = first\n"
        "    case Color.RED:\n"
        "        r = 0\n"
    )
    names = cell_names(code)
    assert names.reads == ("cmd", "Point", "Color")
    assert set(names.assigns) == {"py", "r", "val", "rest", "first", "others"}


def test_top_level_await_and_async_def() -> None:
    names = cell_names("async def co():\n    await other()\nres = await co()")
    assert names.reads == ("other",)
    assert names.assigns == ("co", "res")


def test_dunder_builtins_are_ignored() -> None:
    assert cell_names("class A:\n    pass").builtins == ()


def test_syntax_error_sentence() -> None:
    with pytest.raises(UsageError, match=r"^The cell has a syntax error at line 2: .*nothing was sent\)\.$"):
        check_syntax("x = 1\nprint(x")


def test_compiler_errors_are_syntax_errors_too() -> None:
    with pytest.raises(UsageError, match="line 1: 'return' outside function"):
        check_syntax("return 3")
    with pytest.raises(UsageError, match="syntax error"):
        cell_names("return 3")


def test_indentation_error() -> None:
    with pytest.raises(UsageError, match="line 2: unexpected indent"):
        check_syntax("x = 1\n    y = 2")


@pytest.mark.parametrize(
    ("code", "line", "kind"),
    [
        ("%timeit f()", 1, "an IPython magic"),
        ("%%time\nx = 1", 1, "an IPython magic"),
        ("x = 1\n!pip install foo", 2, "a shell command"),
        ("files = !ls", 1, "a shell command"),
        ("if True:\n    %env A=1", 2, "an IPython magic"),
        ("obj?", 1, "IPython help syntax"),
        ("x = %who_ls", 1, "an IPython magic"),
    ],
)
def test_ipython_syntax_cannot_run_remotely(code: str, line: int, kind: str) -> None:
    with pytest.raises(UsageError) as info:
        check_syntax(code)
    message = str(info.value)
    assert message.startswith(f"Line {line} of the cell is {kind} (")
    assert "cannot run on a worker" in message and "nothing was sent" in message


def test_modulo_is_not_a_magic() -> None:
    check_syntax("x = 7 % 3\ny = x != 2")
    assert reads("x %= 3") == ("x",)


def test_empty_and_comment_only_cells() -> None:
    assert cell_names("") == CellNames((), (), ())
    assert cell_names("# nothing\n") == CellNames((), (), ())


def test_nul_byte_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        check_syntax("x = 1\x00")
