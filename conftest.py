"""Shared pytest set-up: which implementation the tests run against, and exercise stubs as skips.

`pytest --impl mine` (or TUTORIAL_IMPL=mine) puts the learner's folder `mine/` first on sys.path, so
`importlib.import_module("04_bins")` finds `mine/04_bins.py` when the learner made one and the
reference `04_bins.py` otherwise. A test that reaches an unfinished exercise (a body that raises
NotImplementedError("Exercise N.M")) is reported as skipped with the exercise id, not failed.
"""
import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
EXERCISE_STUB = re.compile(r"Exercise \d+\.\d+")


def pytest_addoption(parser):
    parser.addoption("--impl", default=os.environ.get("TUTORIAL_IMPL", "reference"),
                     help="'reference' (default) or a folder of learner copies such as 'mine'")


def pytest_configure(config):
    impl = config.getoption("--impl")
    if impl != "reference":
        folder = (ROOT / impl).resolve()
        if not folder.is_dir():
            raise pytest.UsageError(f"--impl {impl}: no folder {folder}; create it with tests/make_exercises.py")
        sys.path.insert(0, str(folder))
    sys.path.insert(1 if impl != "reference" else 0, str(ROOT))
    # At most 2 threads (the suite's timings were set on 2 cores), and no more than the cores that are
    # free when it starts (helpers/cpu_threads.py: threads on a busy core stall every parallel op).
    from helpers import cpu_threads
    torch.set_num_threads(min(2, cpu_threads.auto_threads()[0]))


def _exercise_id(excinfo):
    """The 'Exercise N.M' an exception comes from, also when a DataLoader or a wrapper re-raised it."""
    exc = excinfo.value if excinfo is not None else None
    while exc is not None:
        if isinstance(exc, NotImplementedError):
            found = EXERCISE_STUB.search(str(exc))
            if found:
                return found.group(0)
        found = EXERCISE_STUB.search(str(exc)) if "NotImplementedError" in str(exc) else None
        if found:
            return found.group(0)
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        exercise = _exercise_id(call.excinfo)
        if exercise:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"{exercise} is not done yet")
            return
        # A failure about an exercise whose message does not say where its code-level hint is (the
        # messages of tests/exercise_checks.py do): say it below the failure.
        text = str(call.excinfo.value)
        named = EXERCISE_STUB.search(text)
        if named and "check_exercise.py" not in text:
            report.sections.append(("exercise hint", f"stuck? python tests/check_exercise.py "
                                                     f"{named.group(0).split()[1]} --hint"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small synthetic KITTI-layout tree (3 drives: train/val/test), shared by every test file."""
    from helpers import synthetic_world
    root = tmp_path_factory.mktemp("tiny_world")
    synthetic_world.make_synthetic_kitti(root, num_drives=3, frames_per_drive=8, height=64, width=208, seed=0)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread for a test that trains (the machine's cores may be shared); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
