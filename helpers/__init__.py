"""helpers - everything that is not a reading step: the engineering around SQLDepth.

The seven numbered scripts at the repository root teach the method; this package holds what a reader
of those concepts never needs: the synthetic world (the default data), the command line, run folders
and checkpoints, data loading plumbing, distributed training, benchmarks and profiling, memory and
optimiser speed-ups, split lists, training health, model files, figures and run comparison.

Imported as `from helpers import run_record`; the runnable ones are started from the repository root
as `python -m helpers.NAME` (compare_runs, predict, benchmark, synthetic_world; `--help` lists each
one's options). Data still flows one way: a helper imports only numbered scripts of lower rank than
every numbered script that imports it (tests/test_house.py checks this).
"""
