"""The questions of understanding (tests/exercise_questions.py): one per exercise, answered in the learner
copy's ANSWER_N_M constants and checked here.

With `--impl mine` each question reads its constant from the learner's copy of the step: None (not
answered yet) is a skip, a right answer passes, a wrong one fails with where to look. In the
reference run (no --impl) there are no answers to read: each question's answer is computed from the
reference code instead (DERIVE below) and must hash to the stored key, so no key can drift from the
code it asks about.
"""
import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exercise_questions import BY_ID, QUESTIONS, answer_key, answers_block, canonical, check_answer

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_exercises", Path(__file__).with_name("make_exercises.py"))
make_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_exercises)

# exercise id -> the module name of its step ("04_bins")
STEP_OF = {ex.id: Path(ex.script).stem for path in make_exercises.find_scripts(ROOT)
           for ex in make_exercises.find_exercises(path)}


def step(name):
    return importlib.import_module(name)


# ---- Each answer computed from the reference code (the facts the question states are asserted too) ----
def derive_1_1():
    data = step("01_data")
    K = data.scale_K(data.normalised_K(), 640, 192)                   # [4, 4] in pixels
    u, _, z = (K @ np.array([1.0, 0.0, 10.0, 1.0]))[:3]
    return round(float(u / z))


def derive_1_2():
    data = step("01_data")
    P = np.array([[100.0, 0, 50, 0], [0, 100, 20, 0], [0, 0, 1, 0]])
    uv, depth = data.project_velo_to_image(np.array([[-1.0, -2.0, -4.0]]), P)
    if len(uv) == 0:
        return "a"
    assert depth[0] < 0 and 0 <= uv[0, 0] < 100 and 0 <= uv[0, 1] < 100  # inside a 100 x 100 image
    return "b"


def derive_2_1():
    unet = step("02_unet")
    encoder = unet.ResNet(18)
    decoder = unet.UNetDecoder(encoder.channels, 64, 16)
    with torch.no_grad():
        f0, f1, f2, f3, f4 = encoder.features(torch.zeros(1, 3, 192, 640))
        first = decoder.conv2(f4)
    assert tuple(f4.shape[-2:]) == (6, 20) and tuple(first.shape[-2:]) == (8, 22)
    return tuple(f3.shape[-2:])


def derive_3_1():
    unet, self_query = step("02_unet"), step("03_self_query")
    torch.manual_seed(0)
    with torch.no_grad():
        s0 = unet.ResnetUNet(18, 64, 16)(torch.zeros(1, 3, 64, 208))  # [1, 16, 32, 104]
        layer = self_query.SelfQueryLayer(16, 8, 4)
        tokens = self_query.embed_patches(s0, layer.patch_embed, layer.pos_encoding)  # [1, N, 16]
    return tokens.shape[1]


def derive_3_2():
    self_query = step("03_self_query")
    torch.manual_seed(0)
    layer = self_query.SelfQueryLayer(16, 8, 4).eval()
    with torch.no_grad():
        _, _, tokens, K = layer(torch.randn(1, 16, 32, 104), return_tokens=True)
    return "a" if torch.equal(K, tokens[:, :4]) else "b"


def derive_4_1():
    bins = step("04_bins")
    torch.manual_seed(0)
    V = torch.randn(2, 3, 4, 5)
    summaries = bins.spatial_softmax_summaries(V, torch.ones(2, 7, 4, 5))  # weights summed per query
    _, P = bins.combine_probabilities(torch.randn(2, 6, 4, 5), torch.rand(2, 6))
    over_pixels = torch.allclose(summaries, torch.ones(2, 3, 7))
    over_bins = torch.allclose(P.sum(1), torch.ones(2, 4, 5))
    return "c" if over_pixels and over_bins else "b"


def derive_4_2():
    bins = step("04_bins")
    edges, _ = bins.bins_from_mlp_output(torch.tensor([[-5.0, -1.0, 0.9, 1.9]]), 0.0, 80.0)
    return float(edges[0, 1] - edges[0, 0])


def derive_4_3():
    bins = step("04_bins")
    centres = torch.tensor([[10.0, 30.0, 50.0, 70.0]])
    depth, _ = bins.combine_probabilities(torch.zeros(1, 4, 2, 2), centres)
    if torch.allclose(depth, centres.mean()):
        return "a"
    return "b" if torch.allclose(depth, torch.tensor(0.0)) else "c"


def derive_5_1():
    posenet_loss = step("05_posenet_loss")
    R = posenet_loss.rot_from_axisangle(torch.tensor([[0.0, math.pi / 2, 0.0]], dtype=torch.float64))[0, :3, :3]
    return tuple(int(round(float(v))) for v in R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def derive_5_2():
    posenet_loss = step("05_posenet_loss")
    K = torch.tensor([[[2.0, 0, 3, 0], [0, 2, 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]]], dtype=torch.float64)
    height, width, u, v = 4, 6, 5, 2
    points = posenet_loss.BackprojectDepth()(torch.full((1, 1, height, width), 10.0, dtype=torch.float64),
                                             torch.linalg.inv(K))        # [1, 4, H*W]
    return tuple(int(round(float(c))) for c in points[0, :3, v * width + u])


def derive_5_3():
    posenet_loss = step("05_posenet_loss")
    torch.manual_seed(0)
    window, c = 7, 0.1
    x = 0.2 + 0.4 * torch.rand(1, 3, 16, 20, dtype=torch.float64)
    ssim = posenet_loss.SSIM(window)
    r = window // 2

    def mean(t):  # local means over window x window blocks of the reflect-padded image
        return F.avg_pool2d(F.pad(t, [r, r, r, r], mode="reflect"), window, 1)
    mu_x, mu_y = mean(x), mean(x + c)
    c1 = getattr(ssim, "C1", 0.01 ** 2)  # Wang et al.'s stabiliser for images in [0, 1]
    luminance_only = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    same = torch.allclose(ssim(x, x + c), (1 - luminance_only) / 2, atol=1e-6)
    return "c" if same else "a"


def derive_5_4():
    posenet_loss = step("05_posenet_loss")
    torch.manual_seed(0)
    identity = torch.zeros(2, 2, 8, 8)                      # the unwarped sources equal the target
    reprojection = 0.01 + 0.09 * torch.rand(2, 2, 8, 8)     # a small wrong motion: small errors
    _, mask = posenet_loss.min_reprojection(reprojection, identity)
    kept = float(mask.float().mean())
    return "b" if kept < 0.05 else ("a" if kept > 0.95 else "c")


def derive_5_5():
    posenet_loss = step("05_posenet_loss")
    torch.manual_seed(0)
    depth, img = 1 + torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ratio = posenet_loss.smoothness_loss(10 * depth, img) / posenet_loss.smoothness_loss(depth, img)
    return round(float(ratio), 3)


def derive_6_1():
    # What a step without zero_grad applies is PyTorch's rule (backward adds to .grad), shown on one
    # parameter: two backward calls, no zero_grad in between.
    p = torch.nn.Parameter(torch.tensor([1.0]))
    (2 * p).sum().backward()
    (3 * p).sum().backward()
    return "a" if float(p.grad) == 5.0 else "b"


def derive_7_1():
    return step("07_eval").median_scale(np.array([10.0, 20.0, 30.0]), np.array([0.25, 0.5, 0.75]))[1]


def derive_7_2():
    return step("07_eval").compute_depth_errors(np.full(4, 10.0), np.array([12.0, 13.0, 8.0, 10.0]))["a1"]


DERIVE = {name[len("derive_"):].replace("_", "."): fn for name, fn in dict(globals()).items()
          if name.startswith("derive_")}


def test_every_exercise_has_one_question_and_a_way_to_check_it():
    """One question per exercise, none for an exercise that does not exist, each with a derivation from
    the reference code; a choice has 2+ options, every option has feedback, and the key is an option."""
    assert sorted(BY_ID) == sorted(STEP_OF) == sorted(DERIVE)
    for q in QUESTIONS:
        assert q.kind in ("choice", "number", "shape") and len(q.key) == 16 and q.nudge, q.id
        if q.kind == "choice":
            assert len(q.options) >= 2 and set(q.feedback) == set(q.options), q.id
            assert sum(answer_key(q.id, "choice", o) == q.key for o in q.options) == 1, q.id


def test_answers_are_read_as_the_learner_writes_them():
    """2.5, 2.50 and 2.5000001 are one number; "B " is "b"; a list is a tuple; -0 is 0; a string where a
    number is asked, a bool or NaN is a wrong answer with what was expected, and None is unanswered."""
    assert canonical("number", 2.5) == canonical("number", 2.50) == canonical("number", 2.5000001)
    assert canonical("choice", "B ") == "b"
    assert canonical("shape", [0, -0.0, -1]) == canonical("shape", (0, 0, -1))
    q = BY_ID["3.1"]
    for wrong in ("52", True, float("nan")):
        state, message = check_answer(q, wrong)
        assert state == "wrong" and "expected a number" in message
    assert check_answer(q, None)[0] == "unanswered"
    assert check_answer(BY_ID["4.1"], "z") == ("wrong", "ANSWER_4_1 = 'z': choose one of a, b, c")


def test_a_wrong_answer_is_told_where_to_look_not_the_answer():
    """Every wrong option of a choice gets its own feedback and the nudge; the message never names the
    right option."""
    for q in QUESTIONS:
        if q.kind != "choice":
            continue
        right = next(o for o in q.options if answer_key(q.id, "choice", o) == q.key)
        for option in q.options:
            state, message = check_answer(q, option)
            assert state == ("right" if option == right else "wrong"), (q.id, option)
            if option != right:
                assert q.feedback[option] in message and q.nudge in message
                assert f"({right})" not in message and f"'{right}'" not in message


def test_answers_block_holds_each_question_and_its_constant():
    """The block appended to a learner copy compiles, sets ANSWER_N_M = None for the step's exercises only,
    and shows each question with its options."""
    block = answers_block(["4.1", "4.2"])
    names = {}
    exec(compile(block, "block", "exec"), names)
    assert names["ANSWER_4_1"] is None and names["ANSWER_4_2"] is None and "ANSWER_4_3" not in names
    assert "# Question 4.1: The softmax of 4.1" in block and "#   (c) 4.1 makes" in block
    assert max(len(line) for line in block.splitlines()) <= 110


@pytest.mark.parametrize("qid", [q.id for q in QUESTIONS])
def test_question(qid, request):
    """Question N.M: the learner's ANSWER_N_M is right (None: skipped); in the reference run, the answer
    computed from the reference code matches the stored key."""
    q = BY_ID[qid]
    impl = request.config.getoption("--impl")
    if impl == "reference":
        derived = DERIVE[qid]()
        assert answer_key(qid, q.kind, derived) == q.key, (
            f"question {qid}: the answer computed from the reference code, {derived!r}, does not match the "
            f"stored key: the code changed, or the key is wrong (python tests/exercise_questions.py --key)")
        return
    module = step(STEP_OF[qid])
    where = Path(module.__file__).resolve()
    if where.parent != (ROOT / impl).resolve():
        pytest.skip(f"Question {qid}: no copy of {where.name} in {impl}/ (python tests/make_exercises.py "
                    f"{where.name[:2]} --out {impl})")
    if not hasattr(module, q.constant):
        pytest.skip(f"Question {qid}: {impl}/{where.name} has no {q.constant} (a copy made before the "
                    f"questions: add `{q.constant} = None` and answer)")
    state, message = check_answer(q, getattr(module, q.constant))
    if state == "unanswered":
        pytest.skip(f"Question {qid} is not answered yet ({q.constant} = None in {impl}/{where.name})")
    assert state == "right", f"Question {qid}: {message}"
