"""Failure messages for the tests of the tutorial exercises: the first wrong element and what to check.

A learner whose exercise is wrong should read where it is wrong and what to look at, not only
"Tensor-likes are not close! Mismatched elements: 3 / 3". These helpers make the comparison each
test always made (torch.testing.assert_close or np.testing.assert_allclose, with the test's own
tolerances: that function decides pass or fail) and, only when it fails, raise an AssertionError
whose first line names the first wrong element (its index, the value got, the value expected),
how many elements differ, and the test's hints; the lines below give the tolerance and, for small
arrays, both arrays in full. Numbers that would read the same at 6 digits (a failing `0.0001 <=
0.0001`) are printed with every digit, and a message about a tutorial exercise ends with the command
that prints its code-level hint (tests/exercise_hints.py).

    assert_close_explained(tokens, want, "Exercise 3.1 embed_patches: tokens",
                           "raster order (row by row)? positional encoding added?",
                           names=("b", "n", "e"), where=lambda i: f"token {i[1]} = ...")
"""
import re

import numpy as np
import torch
from torch.autograd.gradcheck import GradcheckError

from exercise_hints import HINTS

SHOW_WHOLE = 24  # arrays with at most this many elements are printed in full below the first line


def _hint_text(hints):
    return hints if isinstance(hints, str) else " ".join(hints)


def _numpy(x):
    """A tensor, array, list or number as a numpy array (bfloat16 read as float32)."""
    if torch.is_tensor(x):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _flat_text(array):
    """A small array on one line."""
    return " ".join(np.array2string(array, precision=6, separator=", ").split())


def _number(v):
    return str(bool(v)) if isinstance(v, (bool, np.bool_)) else f"{float(v):.6g}"


def _numbers(*values):
    """The values as text, 6 significant digits unless two of them would then read the same: a
    failing check must never print `0.0001 <= 0.0001`, so those get every digit (repr)."""
    short = [_number(v) for v in values]
    if len(set(short)) == len(short) or any(isinstance(v, (bool, np.bool_)) for v in values):
        return short
    return [repr(float(v)) for v in values]


def more_help(what):
    """The line that tells a learner where the code-level hint of the exercise named in `what` is
    ("" when `what` names no exercise of the tutorial)."""
    found = re.match(r"\s*Exercise (\d+\.\d+)\b", what)
    if not found or found.group(1) not in HINTS:
        return ""
    return f"\n  stuck? python tests/check_exercise.py {found.group(1)} --hint   (a code-level hint)"


def index_text(index, names=None):
    """(0, 1, 2) -> "[0, 1, 2]", or "[b=0, n=1, e=2]" with names ("b", "n", "e"); () -> ""."""
    if not index:
        return ""
    if names is None or len(names) != len(index):
        return "[" + ", ".join(str(int(i)) for i in index) + "]"
    return "[" + ", ".join(f"{n}={int(i)}" for n, i in zip(names, index)) + "]"


def _where_text(where, index):
    return f" ({where(index)})" if where is not None else ""


def mismatch_message(got, want, what, hints, atol, rtol, names=None, where=None, equal_nan=False, strict=False):
    """The explanation of a failed closeness check, or None when every element is within
    atol + rtol * |want| (numpy's rule, which torch.testing.assert_close also uses; strict: the
    difference must be below it, as in `abs(got - want) < atol`)."""
    got, want = _numpy(got), _numpy(want)
    try:
        got_b, want_b = np.broadcast_arrays(got, want)
    except ValueError:
        return shape_message(got.shape, want.shape, what, hints)
    g, w = got_b.astype(np.float64), want_b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        allowed, diff = atol + rtol * np.abs(w), np.abs(g - w)
        close = (diff < allowed) if strict else (g == w) | (diff <= allowed)
    if equal_nan:
        close |= np.isnan(g) & np.isnan(w)
    wrong = np.argwhere(~close)
    if len(wrong) == 0:
        return None
    first = tuple(int(i) for i in wrong[0])
    got_text, want_text = _numbers(g[first], w[first])
    diff_text, allowed_text = _numbers(diff[first], allowed[first])
    lines = [f"{what}{index_text(first, names)}{_where_text(where, first)} is {got_text}, "
             f"expected {want_text}; {len(wrong)} of {g.size} values differ. "
             f"Check: {_hint_text(hints)}",
             f"  |got - expected| = {diff_text} there; the test allows {allowed_text} = {atol:g} + {rtol:g} * "
             f"|expected|{' (exclusive)' if strict else ''}"]
    if g.size <= SHOW_WHOLE:
        lines += [f"  got:      {_flat_text(g)}", f"  expected: {_flat_text(w)}"]
    return "\n".join(lines) + more_help(what)


# torch.testing.assert_close's default (rtol, atol) per dtype; other dtypes compare exactly.
TORCH_DEFAULT_TOLERANCES = {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5),
                            torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}


def _torch_tolerances(got, want):
    """The (rtol, atol) torch.testing.assert_close uses by default: the larger of the two dtypes'."""
    pairs = [TORCH_DEFAULT_TOLERANCES.get(torch.as_tensor(x).dtype, (0.0, 0.0)) for x in (got, want)]
    return max(r for r, _ in pairs), max(a for _, a in pairs)


def assert_close_explained(got, want, what, hints, atol=None, rtol=None, names=None, where=None):
    """torch.testing.assert_close(got, want, atol=atol, rtol=rtol) with an explained failure.

    what: what is compared, e.g. "Exercise 3.1 embed_patches: tokens"; hints: what to check (a
    string, or strings joined with spaces); names: one name per dimension for the index; where:
    index -> a few words saying what that element is (e.g. which patch a token comes from)."""
    try:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        return
    except AssertionError as err:
        original = str(err).strip().splitlines()[0]
    if atol is None:
        rtol, atol = _torch_tolerances(got, want)
    got_shape, want_shape = np.shape(_numpy(got)), np.shape(_numpy(want))
    if got_shape != want_shape:
        raise AssertionError(shape_message(got_shape, want_shape, what, hints))
    message = mismatch_message(got, want, what, hints, atol, rtol, names, where)
    if message is None:  # not the values: the dtype or the device differ
        message = f"{what}: {original} Check: {_hint_text(hints)}{more_help(what)}"
    raise AssertionError(message)


def assert_allclose_explained(got, want, what, hints, atol=0.0, rtol=1e-7, names=None, where=None):
    """np.testing.assert_allclose(got, want, rtol=rtol, atol=atol) with an explained failure
    (numpy's defaults, broadcasting and NaN == NaN, as the plain call)."""
    try:
        np.testing.assert_allclose(_numpy(got), _numpy(want), rtol=rtol, atol=atol)
        return
    except AssertionError as err:
        original = " ".join(str(err).split())
    message = mismatch_message(got, want, what, hints, atol, rtol, names, where, equal_nan=True)
    raise AssertionError(message or f"{what}: {original} Check: {_hint_text(hints)}{more_help(what)}")


def assert_near_explained(got, want, what, hints, atol, names=None, where=None):
    """Every |got - want| < atol (strict, as a loop of `abs(float(got) - want) < atol` asserts),
    with an explained failure; got and want are compared in float64."""
    g, w = _numpy(got).astype(np.float64), _numpy(want).astype(np.float64)
    if g.shape != w.shape:
        raise AssertionError(shape_message(g.shape, w.shape, what, hints))
    if not (np.abs(g - w) < atol).all():
        raise AssertionError(mismatch_message(g, w, what, hints, atol, 0.0, names, where, strict=True))


def gradcheck_explained(fn, inputs, what, hints, input_names, **kwargs):
    """torch.autograd.gradcheck(fn, inputs, **kwargs) with an explained failure: which output and
    input disagree (by name) and the hints, instead of the Jacobians printed in full."""
    try:
        passed = torch.autograd.gradcheck(fn, inputs, **kwargs)
    except GradcheckError as err:
        found = str(err).strip().splitlines()[0].rstrip(",")
        for number, name in enumerate(input_names):
            found = found.replace(f"input {number}", f"input {number} ({name})")
        raise AssertionError(f"{what}: {found}. Check: {_hint_text(hints)}{more_help(what)}") from None
    assert passed, f"{what}: gradcheck failed. Check: {_hint_text(hints)}{more_help(what)}"


def shape_message(got_shape, want_shape, what, hints):
    """The text of a failed shape check."""
    return (f"{what} has shape {tuple(got_shape)}, expected {tuple(want_shape)}. "
            f"Check: {_hint_text(hints)}{more_help(what)}")


def value_message(got, want, what, hints):
    """The text of a failed check of one number (pytest.approx or an equality)."""
    got_text, want_text = _numbers(got, want)
    return f"{what} is {got_text}, expected {want_text}. Check: {_hint_text(hints)}{more_help(what)}"


def first_false_message(ok, what, hints, values=None, names=None, where=None):
    """The text of a failed elementwise property: the first index where `ok` is False, the value
    there (from `values`, when given) and how many elements fail."""
    ok = _numpy(ok).astype(bool)
    bad = np.argwhere(~ok)
    if len(bad) == 0:  # the test asserted something else than `ok`
        return f"{what}. Check: {_hint_text(hints)}{more_help(what)}"
    first = tuple(int(i) for i in bad[0])
    value = ""
    if values is not None:
        value = f" (value {_number(np.broadcast_to(_numpy(values), ok.shape)[first])})"
    return (f"{what} fails at {index_text(first, names) or 'the value'}{_where_text(where, first)}{value}; "
            f"{len(bad)} of {ok.size} fail. Check: {_hint_text(hints)}{more_help(what)}")
