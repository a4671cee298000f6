"""Hyperparameter sweeps: Ray Tune with Optuna's TPE search and ASHA early stopping, one MLflow child run per trial.

    space.py    declarative search spaces (each model's default: its record in kuberec.models), validated against
                the model's config dataclass
    trials.py   what a trial runs: the model's `train_trial` (kuberec.<model>.trial), reporting every epoch
    runs.py     MLflow: one parent run per sweep, a child run per trial (a Ray Tune callback on the driver)
    sweep.py    `python -m kuberec.tuning.sweep`: the Ray driver (a local process or a KubeRay RayJob)
    steps.py    `tune(settings, model, table, ...) -> TuneResult`: launches the driver through the backend and reads
                the result back from the parent run
    commands.py `kuberec tune similarity|widedeep`
"""
