"""Model registry and built-in architectures."""

from fmnist.models.registry import count_parameters, create_model, list_models, model_size_mb, register_model

__all__ = ["count_parameters", "create_model", "list_models", "model_size_mb", "register_model"]
