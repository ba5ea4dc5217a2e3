"""Model registry and built-in architectures.

Importing this package registers every built-in family (each module's decorators run on
import); the registry itself never imports a family.
"""

from fmnist.models import baselines, cnn, efficientnet, mlp, resnet, wrn  # noqa: F401  (they register)
from fmnist.models.registry import count_parameters, create_model, list_models, model_size_mb, register_model

__all__ = ["count_parameters", "create_model", "list_models", "model_size_mb", "register_model"]
