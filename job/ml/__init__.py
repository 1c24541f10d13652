"""The ML stage: torch only, no Optuna. Data as uint8 tensors, the augmentation op table
and its batched RandAugment, the seed's blocks and model YAML, training, ONNX export and
the augmentation preview. `vocab` and `errors` import no torch: the config and the
command line read them without loading it."""
