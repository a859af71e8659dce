"""The failure messages of the exercise tests (tests/exercise_checks.py) name the first wrong
element and say what to check.

Typical learner mistakes are planted (the exercise function replaced by a wrong version with
monkeypatch) and the exercise's own test is run: it must fail with an AssertionError whose first
line names the wrong element's index, the value got, the value expected and the hint for that
mistake, so the messages cannot rot when the tests change. The helpers themselves are checked to
decide pass or fail exactly as the comparison they wrap.
"""
import importlib
import math

import numpy as np
import pytest
import torch

import test_03_self_query
import test_05_posenet_loss
import test_07_eval
from exercise_checks import (assert_allclose_explained, assert_close_explained, assert_near_explained,
                             first_false_message, value_message)


def first_line_of_failure(test, *args):
    """Run a test function and return the first line of the AssertionError it must raise."""
    with pytest.raises(AssertionError) as err:
        test(*args)
    return str(err.value).splitlines()[0]


def column_major_patches(s0, patch_conv, pos_encoding):
    """Exercise 3.1 done wrong: the tokens walk down the columns instead of along the rows."""
    tokens = patch_conv(s0).transpose(2, 3).flatten(2).transpose(1, 2)  # [B, N, E], column-major
    return tokens + pos_encoding[: tokens.shape[1]].unsqueeze(0)


def rodrigues_with_a_sign_flip(axisangle):
    """Exercise 5.1 done wrong: [k]x with every sign flipped (R^T, the rotation the other way)."""
    angle = torch.linalg.vector_norm(axisangle, dim=1, keepdim=True)
    kx, ky, kz = (axisangle / (angle + 1e-7)).unbind(1)
    zero = torch.zeros_like(kx)
    skew = torch.stack([zero, kz, -ky, -kz, zero, kx, ky, -kx, zero], 1).view(-1, 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    rot = torch.eye(3, dtype=axisangle.dtype) + sin * skew + (1 - cos) * (skew @ skew)
    out = torch.zeros(axisangle.shape[0], 4, 4, dtype=axisangle.dtype)
    out[:, :3, :3], out[:, 3, 3] = rot, 1
    return out


def backproject_with_u_v_swapped(self, depth, inv_K):
    """Exercise 5.2 done wrong: the pixel grid holds (row, column, 1) instead of (column, row, 1)."""
    b, _, h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype), indexing="ij")
    pix = torch.stack([v.reshape(-1), u.reshape(-1), torch.ones(h * w, dtype=depth.dtype)], 0)
    points = (inv_K[:, :3, :3] @ pix) * depth.reshape(b, 1, h * w)
    return torch.cat([points, torch.ones(b, 1, h * w, dtype=depth.dtype)], 1)


def metrics_with_log10(gt, pred):
    """Exercise 7.2 done wrong: RMSElog with base-10 logarithms."""
    ratio = np.maximum(gt / pred, pred / gt)
    return {"abs_rel": float(np.mean(np.abs(gt - pred) / gt)), "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
            "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
            "rmse_log": float(np.sqrt(np.mean((np.log10(gt) - np.log10(pred)) ** 2))),
            "a1": float(np.mean(ratio < 1.25)), "a2": float(np.mean(ratio < 1.25 ** 2)),
            "a3": float(np.mean(ratio < 1.25 ** 3))}


def test_column_major_patches_name_the_token_and_raster_order(monkeypatch):
    """Exercise 3.1 with column-major tokens: the message names token 1 (index b=0, n=1, e=0) and the
    patch it should come from, both values, and asks about raster order and the positional encoding."""
    monkeypatch.setattr(importlib.import_module("03_self_query"), "embed_patches", column_major_patches)
    line = first_line_of_failure(test_03_self_query.test_embed_patches_matches_per_patch_loop)
    assert line.startswith("Exercise 3.1 embed_patches: tokens[b=0, n=1, e=0] (token 1 = the patch at row 0, "
                           "column 1) is "), line
    assert ", expected " in line and "raster order" in line and "positional encoding" in line, line


def test_rodrigues_sign_flip_names_the_matrix_entry_and_the_formula(monkeypatch):
    """Exercise 5.1 with [k]x's signs flipped: the first wrong entry of the x rotation is row 1, column 2
    (sin 0.3 instead of -sin 0.3), and the message gives Rodrigues' formula and the flipped-sign hint."""
    monkeypatch.setattr(importlib.import_module("05_posenet_loss"), "rot_from_axisangle", rodrigues_with_a_sign_flip)
    line = first_line_of_failure(test_05_posenet_loss.test_rodrigues_matches_closed_form_rotations)
    s = math.sin(0.3)
    assert line.startswith(f"Exercise 5.1 rot_from_axisangle: R for 0.3 rad about the x axis[row=1, col=2] is "
                           f"{s:.6g}, expected {-s:.6g}; 2 of 9 values differ."), line
    assert "flipped sign" in line and "R = I + sin(a) [k]x" in line, line


def test_swapped_u_v_names_the_pixel_and_the_axes(monkeypatch):
    """Exercise 5.2 with u and v swapped: the message names the first wrong coordinate by pixel (image,
    row, column) and says u = column, v = row."""
    monkeypatch.setattr(importlib.import_module("05_posenet_loss").BackprojectDepth, "forward",
                        backproject_with_u_v_swapped)
    line = first_line_of_failure(test_05_posenet_loss.test_backprojection_follows_the_pinhole_model)
    assert line.startswith("Exercise 5.2 BackprojectDepth: the 3-D point[pixel=1, xyz1=0] (X of image 1, row v=4, "
                           "column u=6) is "), line
    assert ", expected " in line and "u = column 0..W-1, v = row 0..H-1" in line and "swapped" in line, line


def test_log10_metric_names_the_metric_and_the_logarithm(monkeypatch):
    """Exercise 7.2 with log10 in RMSElog: the message names rmse_log, both values, and natural logs."""
    monkeypatch.setattr(importlib.import_module("07_eval"), "compute_depth_errors", metrics_with_log10)
    line = first_line_of_failure(test_07_eval.test_metrics_match_hand_computed_values)
    want = math.log(2) * math.sqrt(2 / 3)
    assert line.startswith("Exercise 7.2 compute_depth_errors(gt=[1, 2, 4], pred=[2, 2, 2]): rmse_log is "
                           f"{want / math.log(10):.6g}, expected {want:.6g}. Check: natural logarithms"), line
    assert "np.log10" in line, line


def test_close_explained_decides_as_torch_and_names_the_first_wrong_element():
    """assert_close_explained passes exactly where torch.testing.assert_close passes (its default float32
    tolerance here), and otherwise reports the first wrong index with its names, got, expected, the count
    and the hint; a shape or dtype difference is reported as such."""
    want = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert_close_explained(want + 5e-6, want, "x", "h")                       # within atol 1e-5
    got = want.clone()
    got[1, 0], got[1, 1] = 3.5, 4.5
    with pytest.raises(AssertionError) as err:
        assert_close_explained(got, want, "Exercise 0.0 f: out", "a hint?", names=("r", "c"),
                               where=lambda i: f"row {i[0]}")
    assert str(err.value).splitlines()[0] == ("Exercise 0.0 f: out[r=1, c=0] (row 1) is 3.5, expected 3; 2 of 4 "
                                              "values differ. Check: a hint?")
    with pytest.raises(AssertionError, match=r"has shape \(2, 2\), expected \(4,\)\. Check: a hint\?"):
        assert_close_explained(want, want.flatten(), "out", "a hint?")
    with pytest.raises(AssertionError, match=r"dtype.*Check: a hint\?"):
        assert_close_explained(want, want.double(), "out", "a hint?")


def test_allclose_and_near_explained_keep_their_comparisons():
    """assert_allclose_explained broadcasts and uses numpy's rtol 1e-7 (atol 0) as np.testing.assert_allclose;
    assert_near_explained is strict (|got - want| < atol); first_false_message names the first failing index."""
    assert_allclose_explained(np.full((2, 3), 1.0 + 1e-8), 1.0, "x", "h")
    with pytest.raises(AssertionError, match=r"^x\[1, 2\] is 1\.00001, expected 1; 1 of 6 values differ"):
        assert_allclose_explained(np.array([[1.0] * 3, [1.0, 1.0, 1.00001]]), 1.0, "x", "h")
    assert_near_explained(torch.tensor([1.0]), torch.tensor([1.5]), "x", "h", atol=0.6)
    with pytest.raises(AssertionError, match=r"^x\[0\] is 1, expected 1\.5"):
        assert_near_explained(torch.tensor([1.0]), torch.tensor([1.5]), "x", "h", atol=0.5)
    message = first_false_message(torch.tensor([[True, True], [False, True]]), "w > 0", "relu + 0.1?",
                                  values=torch.tensor([[1.0, 2.0], [-3.0, 4.0]]), names=("b", "d"))
    assert message == "w > 0 fails at [b=1, d=0] (value -3); 1 of 4 fail. Check: relu + 0.1?"


def test_numbers_that_would_read_the_same_are_printed_in_full():
    """A failing check never prints two equal-looking numbers: values that agree to 6 digits are printed
    with every digit (got and expected, the difference and the allowance alike)."""
    assert value_message(1e-4 + 1e-11, 1e-4, "x", "h") == f"x is {1e-4 + 1e-11!r}, expected 0.0001. Check: h"
    assert value_message(2.0, 1.0, "x", "h") == "x is 2, expected 1. Check: h"   # short where they differ
    just_over = 1e-4 + 1e-12
    with pytest.raises(AssertionError) as err:
        assert_allclose_explained(np.array([just_over]), np.array([0.0]), "x", "h", atol=1e-4, rtol=0.0)
    first, second = str(err.value).splitlines()[:2]
    assert first.startswith("x[0] is 0.0001, expected 0; 1 of 1 values differ"), first   # they read apart
    assert second.startswith(f"  |got - expected| = {just_over!r} there; the test allows {1e-4!r} = "), second


def test_a_failing_exercise_check_names_the_hint_command():
    """The message of a failed exercise check ends with the command that prints the code-level hint;
    a check that names no exercise of the tutorial does not."""
    with pytest.raises(AssertionError) as err:
        assert_close_explained(torch.ones(3), torch.zeros(3), "Exercise 4.2 bins_from_mlp_output: edges", "h")
    assert str(err.value).splitlines()[-1] == ("  stuck? python tests/check_exercise.py 4.2 --hint   "
                                               "(a code-level hint)")
    with pytest.raises(AssertionError) as err:
        assert_close_explained(torch.ones(3), torch.zeros(3), "Exercise 0.0 f: out", "h")
    assert "check_exercise" not in str(err.value)
