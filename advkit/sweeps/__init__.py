"""Hyper-parameter sweeps on Optuna (``advkit sweep SPACE.yaml``): the space file, the objective, the driver.

Optuna samples, prunes and keeps the study in its database; advkit turns each sampled configuration into
ordinary ``advkit train`` runs and their validation metrics into the values Optuna optimises.
"""
