"""One question of understanding per tutorial exercise, answered in the learner's copy, checked by pytest.

A learner copy of a step (tests/make_exercises.py) ends with a block of constants, one per exercise
of that step, `ANSWER_4_1 = None`, each below its question. The learner replaces None with an
answer: a letter for a choice ("b"), a number (52, or 2.5), or a shape as a tuple of integers
((12, 40)). tests/test_exercise_questions.py checks them (None: skipped, like an unfinished
exercise), and `python tests/check_exercise.py` shows their state.

The answer key is stored as hashes, so reading this file does not give the answers away; the
reference run (pytest without --impl) recomputes each answer from the reference code and checks
that it hashes to the key, so no key can drift from the code it asks about. A wrong answer is told
where to look, and, for a choice, why that option is not it, never the answer itself.

    python tests/exercise_questions.py --key 4.1 b     # prints the key of an answer (maintainers)

Only the standard library is used (tests/make_exercises.py writes the block without torch).
"""
import argparse
import ast
import hashlib
import math
import sys
import textwrap
from dataclasses import dataclass, field

KINDS = {"choice": 'one letter, as a string ("a")', "number": "a number, e.g. 12 or 0.25",
         "shape": "a tuple of integers, e.g. (3, 4)"}


@dataclass(frozen=True)
class Question:
    id: str             # the exercise id, "N.M"
    text: str           # the question as the learner copy shows it
    kind: str           # "choice", "number" or "shape" (see KINDS)
    key: str            # answer_key(id, the right answer): a hash, not the answer
    nudge: str          # told after a wrong answer: where to look, not what to answer
    options: dict = field(default_factory=dict)   # choice: letter -> option text
    feedback: dict = field(default_factory=dict)  # choice: letter -> why (shown after that answer)

    @property
    def constant(self):
        """The learner's constant for this question, e.g. ANSWER_4_1."""
        return "ANSWER_" + self.id.replace(".", "_")


def canonical(kind, value):
    """The answer as the one text that is hashed, or raises ValueError (with what was expected).
    Numbers count to 4 significant digits, so 2.5, 2.50 and 2.5000001 are the same answer."""
    def number(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"expected {KINDS['number']}, got {v!r}")
        return f"{float(v) + 0.0:.4g}"  # + 0.0 turns -0.0 into 0.0
    if kind == "choice":
        if not isinstance(value, str) or len(value.strip()) != 1:
            raise ValueError(f"expected {KINDS['choice']}, got {value!r}")
        return value.strip().lower()
    if kind == "number":
        return number(value)
    if kind == "shape":
        if not isinstance(value, (tuple, list)) or not value:
            raise ValueError(f"expected {KINDS['shape']}, got {value!r}")
        return "(" + ", ".join(number(v) for v in value) + ")"
    raise ValueError(f"unknown kind of question {kind!r}")


def answer_key(qid, kind, value):
    """The stored key of an answer: a short hash of the exercise id and the canonical answer."""
    return hashlib.sha256(f"{qid}|{canonical(kind, value)}".encode()).hexdigest()[:16]


def check_answer(question, value):
    """(state, message) for the learner's answer: state "unanswered" (None), "right" or "wrong"."""
    if value is None:
        return "unanswered", f"{question.constant} is None: answer {KINDS[question.kind]}"
    try:
        given = canonical(question.kind, value)
    except ValueError as err:
        return "wrong", f"{question.constant}: {err}"
    if question.kind == "choice" and given not in question.options:
        return "wrong", f"{question.constant} = {value!r}: choose one of {', '.join(sorted(question.options))}"
    why = question.feedback.get(given, "")
    if answer_key(question.id, question.kind, value) == question.key:
        return "right", f"{question.constant} = {value!r} is right.{' ' + why if why else ''}"
    return "wrong", (f"{question.constant} = {value!r} is not right. {why + ' ' if why else ''}"
                     f"{question.nudge}")


QUESTIONS = [
    Question(
        "1.1", "A 640x192 training image (K_norm = normalised_K()). A point 1 m to the right of the optical "
        "axis and 10 m ahead (camera coordinates X = 1, Y = 0, Z = 10): at which column u does it land? "
        "Round to the nearest pixel.", "number", "1eac31c27786bc70",
        "u = fx * X / Z + cx with fx and cx in pixels: which row of K holds them, and what are they at "
        "this width?"),
    Question(
        "1.2", "A lidar point behind the camera (its third projected coordinate, the depth, is negative) goes "
        "through project_velo_to_image. What comes out?", "choice", "3af07ec627364e59",
        "Divide a homogeneous point with a negative third coordinate by it by hand, with P = "
        "[[100, 0, 50, 0], [0, 100, 20, 0], [0, 0, 1, 0]] and the point (-1, -2, -4).",
        options={"a": "Nothing: the function drops points with depth <= 0.",
                 "b": "A pixel (u, v) that can lie inside the image, as if the point were in front (the "
                      "division flips both signs); whoever calls the function must drop depth <= 0.",
                 "c": "It raises an error: a negative depth has no projection."},
        feedback={"a": "The function returns as many rows as it receives: nothing in it looks at the sign.",
                  "b": "velodyne_to_depth keeps only points with x >= 0 (in front) before it projects.",
                  "c": "Nothing in a matrix product and a division raises for a negative number."}),
    Question(
        "2.1", "At a 640x192 input the decoder's first map, conv2(f4), is (h, w) = (8, 22): f4 is (6, 20), and "
        "conv2's padding=1 quirk adds 2 pixels. up1 joins it to the skip f3. What (h, w) must up1 upsample "
        "it to? (scale_factor=2 would give (16, 44).)", "shape", "675dc1c95d467bd0",
        "The skip of up1 is the encoder's output at 1/16 of the input resolution; the upsampled map must "
        "match the skip exactly, or torch.cat along channels fails."),
    Question(
        "3.1", "Step 3 at a 208x64 input (W x H) with patch size p = 8: how many tokens N does embed_patches "
        "make?", "number", "5c793c18f892878b",
        "S0 is not at the input resolution (see 02: S0 is [B, E, H/2, W/2]); each token is one p x p "
        "patch of S0, and a stride-p conv leaves floor(h/p) x floor(w/p) of them."),
    Question(
        "3.2", "Where do the queries K come from in SQLDepth (queries='self')?", "choice", "0473f9c52ce92648",
        "Read SelfQueryLayer.forward in 03: what is K for queries == 'self'?",
        options={"a": "The first Q output tokens of the transformer for this very image: coarse summaries "
                      "of its own patches, so the cost volume compares the image with itself.",
                 "b": "Learned parameters, the same vectors for every image (DETR-style).",
                 "c": "The bin centres of 04, one query per depth bin."},
        feedback={"a": "Hence 'self-query': V compares each pixel with summaries of the same image.",
                  "b": "That is the 'learned' ablation of 03 (nn.Embedding queries), not SQLDepth's own.",
                  "c": "The bins are made from V in 04; V needs the queries first."}),
    Question(
        "4.1", "The softmax of 4.1 runs over the pixels, that of 4.3 over the bins. Why?", "choice",
        "2b5406afe789d1d6",
        "Ask of each softmax: what must sum to 1, and what is the weighted sum it feeds?",
        options={"a": "Either axis would do; the choice only changes the speed.",
                 "b": "4.1 assigns every pixel to one query (weights over the queries sum to 1 per pixel); "
                      "4.3 spreads each bin over the pixels.",
                 "c": "4.1 makes, per query, a weighted mean of the pixels' features (weights over the "
                      "pixels, one image-wide summary per query); 4.3 makes, per pixel, a probability "
                      "distribution over the depth bins (the pixel's depth is its expected bin centre)."},
        feedback={"a": "Change the axis in either one and the test catches it: the outputs differ in meaning, "
                       "not only in value.",
                  "b": "That swaps the roles: in 4.1 each query's weights sum to 1 over the pixels; in 4.3 "
                       "each pixel's probabilities sum to 1 over the bins.",
                  "c": "A softmax over Q in 4.1 would give per-pixel weights, not one summary per query; one "
                       "over the pixels in 4.3 would not give each pixel a distribution over depths."}),
    Question(
        "4.2", "D = 4 bins over [min_depth, max_depth] = [0, 80] m and the MLP's raw output y = [-5, -1, 0.9, "
        "1.9]. How wide is the first bin, in metres?", "number", "f544328cabba9caa",
        "Follow the docstring by hand: relu, + 0.1, divide by the sum, times the range. What does relu do "
        "to -5, and what does the + 0.1 keep from happening?"),
    Question(
        "4.3", "A pixel whose logits are all equal (a flat P, as in an untrained network). What depth does it "
        "get?", "choice", "38034734f76963b9",
        "With a flat P every P_d is 1/D: what is sum_d P_d * c_d then?",
        options={"a": "The mean of the bin centres: with uniform bins over [0, 80] m, the middle of the range, "
                      "about 40 m.",
                 "b": "min_depth: nothing is predicted yet.",
                 "c": "The centre of the most likely bin, which is the first one on a tie."},
        feedback={"a": "So an untrained network puts every pixel at about the same depth, as `python "
                       "04_bins.py` shows without --checkpoint.",
                  "b": "Depth is a weighted mean of the centres, never below the first one.",
                  "c": "4.3 takes the expectation over the bins, not the argmax."}),
    Question(
        "5.1", "axisangle = (0, pi/2, 0): a quarter turn about the y axis (right-handed; y points down in "
        "the camera frame). Where does the x unit vector (1, 0, 0) go? Answer (x, y, z) as integers.",
        "shape", "29338958fcf9cb9f",
        "Take R's first column: R @ (1, 0, 0). With k = (0, 1, 0), write [k]x and [k]x^2 out and put "
        "sin(a) = 1, cos(a) = 0 into Rodrigues' formula."),
    Question(
        "5.2", "K has fx = fy = 2 and (cx, cy) = (3, 2). The pixel at column u = 5, row v = 2 has depth 10. "
        "What 3-D point (X, Y, Z) does BackprojectDepth give it? Answer integers.", "shape", "4b0701ca3a669a61",
        "inv_K @ (u, v, 1) is the ray ((u - cx) / fx, (v - cy) / fy, 1); the point is that ray times the "
        "depth."),
    Question(
        "5.3", "y = x + c, the same image made uniformly brighter by a constant c. Which of SSIM's terms "
        "change?", "choice", "040795b9c1f6619b",
        "Write mu_y, sigma_y and sigma_xy for y = x + c in terms of those of x.",
        options={"a": "All of them: every term reads the pixel values.",
                 "b": "Only the structure term: a brighter image has different structure.",
                 "c": "Only the mean (luminance) term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1): the "
                      "variances and the covariance do not move under a constant shift."},
        feedback={"a": "Variances and covariances subtract the means first: a shift drops out.",
                  "b": "sigma_xy = E[xy] - mu_x mu_y: put y = x + c in and the c terms cancel.",
                  "c": "So SSIM forgives lighting changes more than L1 does, which is why the loss mixes "
                       "both."}),
    Question(
        "5.4", "The camera stands still (the three frames are identical) but the pose net predicts a small, "
        "non-zero motion. Which pixels does the auto-mask keep in the loss?", "choice", "e19554ff0cc1b6e0",
        "With identical frames, what is the photometric error of the unwarped source (identity), and can a "
        "warped one beat it?",
        options={"a": "All of them: the auto-mask only removes the pixels of moving objects.",
                 "b": "Almost none: the unwarped source already matches the target (error 0), so it wins "
                      "the minimum at nearly every pixel.",
                 "c": "Only the pixels on image edges, where the small warp changes the image most."},
        feedback={"a": "The mask keeps a pixel only where a warped source beats every unwarped one.",
                  "b": "That is what Monodepth2 made it for: a still camera teaches nothing about depth, so "
                       "such frames drop out of the loss.",
                  "c": "On edges the warp's error is the largest, so the unwarped source wins there too."}),
    Question(
        "5.5", "Multiply a depth map by 10 (the same image). By what factor does smoothness_loss change?",
        "number", "d03f13806050e1d4",
        "What does the division by the per-image mean do to a depth map that is 10 times larger?"),
    Question(
        "6.1", "A training step without zero_grad: which gradient does optimizer.step() apply at the second "
        "step?", "choice", "5b62744afd4bc305",
        "Where does backward() put its result: does it replace .grad or add to it?",
        options={"a": "The sum of the first and the second step's gradients.",
                 "b": "The gradient of the second step's loss only: backward() overwrites .grad.",
                 "c": "Zero: optimizer.step() clears the gradients after using them."},
        feedback={"a": "So every forgotten zero_grad adds all earlier gradients to the step.",
                  "b": "backward() accumulates into .grad (that is what lets a loss be summed over several "
                       "backward calls); only zero_grad clears it.",
                  "c": "step() reads .grad and leaves it as it is."}),
    Question(
        "7.1", "gt = [10, 20, 30] m, pred = [0.25, 0.5, 0.75] (a monocular network knows depth only up to "
        "scale). What ratio does median_scale return?", "number", "2c57a39a49534db2",
        "The ratio maps the prediction's median onto the ground truth's: which median goes on top?"),
    Question(
        "7.2", "gt = [10, 10, 10, 10] m, pred = [12, 13, 8, 10]. What is a1 (the delta < 1.25 accuracy)?",
        "number", "7c45f7995c991ef7",
        "For each pixel take max(gt/pred, pred/gt) and count those strictly below 1.25: where does 10/8 "
        "land?"),
]
BY_ID = {q.id: q for q in QUESTIONS}


def answers_block(exercise_ids):
    """The text appended to a learner copy: each question of these exercises as comments, with its
    ANSWER_N_M = None below it."""
    lines = ["", "", "# " + "=" * 94,
             "# ---- Questions of understanding: one per exercise of this step (not in the reference) ----",
             "# Replace None by your answer; `python tests/check_exercise.py N.M` checks it and the exercise.",
             "# " + "=" * 94]
    for qid in exercise_ids:
        q = BY_ID.get(qid)
        if q is None:
            continue
        lines.append("")
        lines += textwrap.wrap(f"Question {q.id}: {q.text}", 96, initial_indent="# ", subsequent_indent="#   ")
        for letter, text in sorted(q.options.items()):
            lines += textwrap.wrap(f"({letter}) {text}", 96, initial_indent="#   ",
                                   subsequent_indent="#       ")
        letters = " or ".join(f'"{letter}"' for letter in sorted(q.options))
        lines.append(f"{q.constant} = None  # your answer: {letters or KINDS[q.kind]}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print the stored key of an answer (for maintainers).")
    parser.add_argument("--key", nargs=2, metavar=("ID", "ANSWER"), required=True,
                        help="exercise id and answer, e.g. --key 4.1 b, --key 3.1 52, --key 2.1 '(12, 40)'")
    args = parser.parse_args(argv)
    qid, text = args.key
    question = BY_ID.get(qid)
    if question is None:
        parser.error(f"no question {qid}")
    value = text if question.kind == "choice" else ast.literal_eval(text)  # a number or a tuple
    print(answer_key(qid, question.kind, value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
