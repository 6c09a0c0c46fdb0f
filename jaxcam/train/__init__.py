"""Training models that jaxcam explains: optax loops, CAM-aware losses, orbax checkpoints, bit-exact resume.

Every model trains through the same tapped forward it is explained with (:mod:`jaxcam.tapped`), so a loss that
differentiates through a CAM (SHAM, CAM-loss) uses exactly the maps :func:`jaxcam.explain` returns.
"""

from .losses import LOSSES, CamPass, LossContext, LossSpec, accuracy, cross_entropy, gradcam_maps, tap_values

__all__ = ["CamPass", "LOSSES", "LossContext", "LossSpec", "accuracy", "cross_entropy", "gradcam_maps",
           "tap_values"]
