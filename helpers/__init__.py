"""helpers - everything that is not a reading step: the engineering around SQLDepth, one module per job.

synthetic_world (the default data), kitti_files (split lists, KITTI made ready), color_jitter (01's
augmentation maths), training_data (loaders),
cli (the command-line convention), run_record (a run's flags, folder, checkpoints, logs, resume),
model_files (every weights file read back, the official release), training_health, distributed_training,
cpu_threads, speed_layer (the CPU speed-ups), benchmark (speed tables, --profile), figures, eval_tables,
compare_runs (runs side by side, score files), predict, study.

Imported as `from helpers import run_record`; the runnable ones are started from the repository root
as `python -m helpers.NAME` (`--help` lists each one's options). Data still flows one way: a helper
imports only numbered scripts of lower rank than every numbered script that imports it
(tests/test_house.py checks this).
"""
