"""Training: the argument dataclasses (`arguments`) and their cross-checks (`checks`), the run's inputs
(`inputs`), building the Trainer (`build`), `MultitaskTrainer` (`trainer`), callbacks, LLRD optimizer groups
(`optim`), AWP, distributed helpers, hyper-parameter search and what happens after training (`finish`).

Uses `io`, `data`, `model` and `scoring`; nothing below imports it.
"""
