"""jaxcam: Class Activation Map methods and their evaluation, in JAX/Flax.

Distribution name ``jax-cam``; import name ``jaxcam``. The public API is listed in ``__all__``.
"""

from . import datasets, metrics, noise, robustness, synthetic, targets, train
from ._explain import explain, explain_program, explainer
from .data import imagenet_classes, preprocess, sample_images, to_rgb
from .errors import (CheckpointError, ChecksumMismatchError, ClassIndexError, CorruptFileError, EmptySourceError,
                     ImageDtypeError, ImageError, ImageFileError, ImageShapeError, ImageTooLargeError,
                     InvalidArgumentError, InvalidNameError, JaxcamError, LayerNotCalledError, MapError, MaskError,
                     MissingCheckpointFilesError, MissingDependencyError, NonFiniteImageError,
                     NonFiniteParametersError, StateDictError, UnknownArchitectureError, UnknownLayerError,
                     UnknownNameError)
from .methods import METHODS, MethodSpec
from .methods.broadcam import BroadCAMWeights, fit_broadcam
from .models import ARCHITECTURES, Model, Predictions, convert_state_dict, split
from .evaluate import METRICS, evaluate
from .models.loader import load_model
from .table import Table
from .tapped import Tapped
from .models.equinox_adapter import from_equinox
from .models.function_adapter import from_function
from .models.hf import from_hf
from .models.inspect import layers
from .models.linen import from_linen
from .models.nnx_adapter import from_nnx
from .models.reference_cnn import reference_model
from .synthetic import synthetic_source

__version__ = "0.1.0"

__all__ = [
    "BroadCAMWeights", "LayerNotCalledError", "Tapped", "explain_program", "fit_broadcam", "from_equinox",
    "from_function", "from_hf", "from_linen", "from_nnx", "layers", "reference_model", "synthetic", "synthetic_source",
    "train",
    "ARCHITECTURES", "METHODS", "METRICS", "MethodSpec", "Table", "evaluate", "explain", "explainer", "metrics",
    "targets", "MapError", "MaskError", "datasets", "noise", "robustness", "CheckpointError",
    "ChecksumMismatchError", "ClassIndexError", "CorruptFileError", "EmptySourceError", "ImageDtypeError", "ImageError", "ImageFileError",
    "ImageShapeError", "ImageTooLargeError", "InvalidArgumentError", "InvalidNameError", "JaxcamError", "MissingCheckpointFilesError", "MissingDependencyError", "Model",
    "NonFiniteImageError", "NonFiniteParametersError", "Predictions", "StateDictError", "UnknownArchitectureError", "UnknownLayerError",
    "UnknownNameError", "__version__", "convert_state_dict", "imagenet_classes", "load_model", "preprocess",
    "sample_images", "split", "to_rgb",
]
