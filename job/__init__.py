"""small-model-search: search small, accurate image classifiers.

The data path of one trial, one module per stage, in pipeline order:
config → data → augment → model (modules) → train; the search layer (space)
samples a model, an augmentation policy and training knobs from an Optuna trial.
"""

__version__ = "0.1.0"
