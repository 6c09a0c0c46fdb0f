"""Flax NNX image classifiers laid out like their PyTorch sources, exposed as pure functions over named stages."""

from .architectures import ARCHITECTURES, Architecture, get_architecture
from .convert import (convert_state_dict, expected_source_shapes, model_state_dict, random_state_dict,
                      read_state_dict)
from .model import Model, Predictions, StageRange, split

__all__ = ["ARCHITECTURES", "Architecture", "Model", "Predictions", "StageRange", "convert_state_dict",
           "expected_source_shapes", "get_architecture", "model_state_dict", "random_state_dict",
           "read_state_dict", "split"]
