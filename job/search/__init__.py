"""The search stage: Optuna. A trial becomes typed, frozen values (`space`) and its
results one `TrialRecord` (`record`, the one module that names user-attr keys); one
worker loop runs a search task or a retrain task (`worker`, `tasks`, `retrain`); the
study's figures (`study`), its versions and fingerprints (`versions`)."""
