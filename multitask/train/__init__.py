"""Training: the argument dataclasses (`arguments`) and their cross-checks (`checks`), the run's inputs
(`inputs`), building the Trainer (`build`), `MultitaskTrainer` (`trainer`), callbacks, LLRD optimizer groups
(`optim`), AWP, distributed helpers, hyper-parameter search, what happens after training (`finish`) and one whole
run from the arguments (`finetune`: run_finetune.py's body, `multitask.finetune` from Python).

Uses `io`, `data`, `model` and `scoring`; nothing below imports it.
"""
