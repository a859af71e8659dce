"""cpu_memory: huge pages for PyTorch's CPU tensors take effect when switched on before the first
big tensor, are left off when the environment says so or when it is too late; glibc keeps memory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cpu_memory

ROOT = Path(__file__).resolve().parents[1]


def fresh_process(code, **env):
    """Run `code` in a new Python (this repository importable) and return its last output line."""
    full_env = {k: v for k, v in os.environ.items() if k != cpu_memory.THP_SWITCH}
    full_env.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch madvises huge pages on Linux only")
def test_huge_pages_take_effect_at_the_start_of_a_process():
    code = "from helpers import cpu_memory; print(cpu_memory.tune_cpu_memory())"
    assert fresh_process(code) == "True"


def test_huge_pages_off_without_the_switch_or_when_the_environment_says_no():
    assert fresh_process("from helpers import cpu_memory; print(cpu_memory.huge_pages_in_effect())") == "False"
    code = "from helpers import cpu_memory; print(cpu_memory.use_huge_pages())"
    assert fresh_process(code, THP_MEM_ALLOC_ENABLE="0") == "False"


def test_huge_pages_switched_on_too_late_do_nothing():
    """PyTorch reads the switch once, at the first CPU tensor of 2 MB or more."""
    code = ("import torch\nfrom helpers import cpu_memory; big = torch.zeros(1 << 20)\n"
            "print(cpu_memory.use_huge_pages())")
    assert fresh_process(code) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_is_reused_without_page_faults():
    """A freed 16 MB array's memory serves the next one: its pages are not faulted in again (without
    retain_freed_memory glibc hands them back, and the new array cost ~500 faults on our machines)."""
    code = ("import numpy as np\nfrom helpers import cpu_memory; cpu_memory.retain_freed_memory()\n"
            "a = np.ones(4 << 20, np.float32); del a\n"
            "before = cpu_memory.page_faults()\n"
            "b = np.ones(4 << 20, np.float32)\n"
            "print(cpu_memory.page_faults() - before)")
    assert int(fresh_process(code)) < 50
