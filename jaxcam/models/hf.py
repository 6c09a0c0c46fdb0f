"""``from_hf``: explain a Hugging Face Flax image classifier (ViT, BEiT, DINOv2, ResNet, RegNet, ...).

A ``FlaxPreTrainedModel`` is a linen module (``model.module``) plus its variables (``model.params``, which for
ResNet and RegNet also hold ``batch_stats``), so it goes through :func:`jaxcam.from_linen`. The wrapper's
``__call__`` takes NCHW ``pixel_values`` and transposes them; the module itself takes the NHWC batch jaxcam
passes, so jaxcam calls the module directly (``deterministic=True``: dropout off, BatchNorm on its running
statistics). Outputs are ``ModelOutput``s: ``.logits`` is selected. Token outputs map to grids with the config's
``patch_size`` (the prefix inferred per layer: 1 CLS token for ViT/BEiT/DINOv2, plus registers where present);
layers are named by module path, as in the PyTorch twin (``vit.encoder.layer.11.layernorm_before`` is
``model.vit.encoder.layer[11].layernorm_before``).

Transformers 5 removed every Flax class: the optional extra pins 4.57.6, the last release with them. Nothing here
downloads anything: pass a model you built or loaded yourself.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from ..errors import InvalidArgumentError
from .architectures import IMAGENET_MEAN, IMAGENET_STD
from .linen import from_linen

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# the image processors' defaults per model type (the configs carry no normalisation)
NORMALISATION = {"vit": HALF, "beit": HALF, "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
                 "resnet": (IMAGENET_MEAN, IMAGENET_STD), "regnet": (IMAGENET_MEAN, IMAGENET_STD),
                 "clip_vision_model": CLIP}
# the convolutional backbones' last stage (the layer before global average pooling and the classifier)
LAST_STAGE = {"resnet": ("resnet.encoder.stages", "hidden_sizes"), "regnet": ("regnet.encoder.stages", "hidden_sizes")}


def _variables(params) -> dict:
    """``model.params`` as linen variables: ResNet/RegNet hold ``{"params", "batch_stats"}`` already."""
    if isinstance(params, Mapping) and "params" in params and isinstance(params["params"], Mapping):
        return dict(params)
    return {"params": params}


def _call_kwargs(module) -> dict:
    accepted = inspect.signature(type(module).__call__).parameters
    wanted = {"deterministic": True, "train": False, "return_dict": True, "output_attentions": False,
              "output_hidden_states": False}
    return {k: v for k, v in wanted.items() if k in accepted}


def _input_size(config, processor) -> int:
    for source in (getattr(processor, "crop_size", None), getattr(processor, "size", None)):
        if isinstance(source, Mapping):
            for key in ("height", "shortest_edge"):
                if isinstance(source.get(key), int):
                    return int(source[key])
    size = getattr(config, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _class_names(config, n: int):
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(n)]
    return None if any(v is None for v in names) else [str(v) for v in names]


def from_hf(model, *, params=None, layer: str | None = None, layers: Sequence[str] | None = None, processor=None,
            input_size: int | None = None, mean=None, std=None, class_names=None, name: str | None = None):
    """A :class:`jaxcam.Model` explaining a Hugging Face Flax image classifier, for :func:`jaxcam.explain`,
    :func:`jaxcam.evaluate`, ``jaxcam.robustness.run``, the metrics and the CLI.

    Args:
      model: a ``FlaxPreTrainedModel`` for image classification (``FlaxViTForImageClassification``,
        ``FlaxResNetForImageClassification``, BEiT, DINOv2, RegNet, ...).
      params: its variables when the model was built with ``_do_init=False`` (default ``model.params``).
      layer: the default layer (module path). Default: a ViT's last block's first LayerNorm
        (``vit.encoder.layer.<last>.layernorm_before``), a ResNet's or RegNet's last stage.
      layers: restrict the layer names offered (see :func:`jaxcam.from_linen`).
      processor: the model's image processor (optional): its ``image_mean``, ``image_std`` and size are used.
      input_size, mean, std: override the preprocessing (default: the processor's, else the config's
        ``image_size`` and the processor defaults for the model type: 0.5/0.5 for ViT and BEiT, ImageNet's for
        ResNet, RegNet and DINOv2).
      class_names: default ``config.id2label``.
    """
    module, config = getattr(model, "module", None), getattr(model, "config", None)
    if module is None or config is None or not hasattr(type(model), "params"):
        raise InvalidArgumentError(f"from_hf needs a Hugging Face Flax model (FlaxViTForImageClassification, "
                                   f"FlaxResNetForImageClassification, ...), got {type(model).__name__}; a PyTorch "
                                   "checkpoint converts locally with FlaxXxx.from_pretrained(dir, from_pt=True)")
    kind = getattr(config, "model_type", "")
    default_mean, default_std = NORMALISATION.get(kind, (IMAGENET_MEAN, IMAGENET_STD))
    if mean is None:
        mean = tuple(getattr(processor, "image_mean", None) or default_mean)
    if std is None:
        std = tuple(getattr(processor, "image_std", None) or default_std)
    size = _input_size(config, processor) if input_size is None else input_size
    if layer is None and kind in LAST_STAGE:
        prefix, field = LAST_STAGE[kind]
        layer = f"{prefix}.{len(getattr(config, field)) - 1}"
    num_labels = int(getattr(config, "num_labels", 0))
    if class_names is None and num_labels:
        class_names = _class_names(config, num_labels)
    variables = _variables(model.params if params is None else params)
    return from_linen(module, variables, layers=layers, default_layer=layer, output="logits",
                      call_kwargs=_call_kwargs(module), input_size=size, mean=mean, std=std,
                      class_names=class_names, name=name or type(model).__name__,
                      patch_size=getattr(config, "patch_size", None), source="huggingface")


__all__ = ["from_hf"]
