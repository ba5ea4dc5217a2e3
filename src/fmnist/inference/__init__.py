"""Using a trained model: checkpoints, evaluation, prediction, test-time augmentation, export,
and ensembles."""
