"""Training: the argument dataclasses (`arguments`, each validating its own fields in `__post_init__`), their
grouped `--help` (`parser`), the run's inputs (`inputs`), building the Trainer (`build`), `MultitaskTrainer`
(`trainer`), callbacks, LLRD optimizer groups (`optim`), AWP, distributed helpers, hyper-parameter search, what
happens after training (`finish`) and one whole run from the arguments (`finetune`: run_finetune.py's body,
`multitask.finetune` from Python).

Uses `io`, `data`, `model`, `scoring`, `serve` (scoring a finished run) and `multitask.checks`; nothing in the
package below the scripts imports it.
"""
