"""Training one model: the trainer, resumable state, optimizers and schedules, callbacks,
progress, TensorBoard, run results, run directories, recipes, and the scikit-learn baselines."""
