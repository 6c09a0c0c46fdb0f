"""Training models that jaxcam explains: optax loops, CAM-aware losses, orbax checkpoints, bit-exact resume.

Every model trains through the same tapped forward it is explained with (:mod:`jaxcam.tapped`), so a loss that
differentiates through a CAM (SHAM, CAM-loss) uses exactly the maps :func:`jaxcam.explain` returns.
"""

from .losses import LOSSES, CamPass, LossContext, LossSpec, accuracy, cross_entropy, gradcam_maps, tap_values
from . import ame, assess, camloss, sham  # noqa: E402  (after losses: their registry imports them)
from .loop import NonFiniteLossError, TrainResult, TrainState, evaluate_accuracy, fit, trainable_mask
from .optim import OPTIMIZERS, SCHEDULES
from .pipeline import AUGMENTATIONS

__all__ = ["ame", "assess", "camloss", "sham", "CamPass", "LOSSES", "LossContext", "LossSpec", "accuracy", "cross_entropy", "gradcam_maps",
           "tap_values", "AUGMENTATIONS", "NonFiniteLossError", "OPTIMIZERS", "SCHEDULES", "TrainResult",
           "TrainState", "evaluate_accuracy", "fit", "trainable_mask"]
