"""The METHODS registry: one literal dict from name to a spec that declares what the method needs.

The driver (:func:`jaxcam.explain`) reads these declarations, so asking for every gradient method costs one
forward and one (batched) backward; perturbation methods add their head-only or full passes, chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import activation, adcam, broadcam, fullgrad, gradient, multipass, own_maps, perturbation, ssa, sycam


@dataclass(frozen=True)
class MethodSpec:
    """``output``: "weighted" (the function returns (h, w, K) weighted activations, reduced by a channel sum or,
    with ``eigen_smooth``, by their first principal component), "projection" (always the principal component),
    "map" (the function returns the (h, w) map), "whole_network" (FullGrad: gradients at every bias layer and the
    input, the target layer is ignored), "multiscale" (CAMERAS: its own passes at several input sizes) or
    "ensemble" (MetaCAM: a combination of member methods' maps). ``target``: the default target score (see :mod:`jaxcam.targets`);
    ``intrinsic_target`` methods ignore the caller's ``target``. ``cost`` is in passes per image per layer:
    F = full forward, B = backward from the score to the layer, F_h = head-only forward."""

    name: str
    fn: Callable
    family: str
    output: str
    gradients: bool
    cost: str
    paper: str
    parity: str
    hvp: bool = False
    target: str = "logit"
    intrinsic_target: bool = False
    head_passes: str = ""
    full_forwards: str = ""
    gap_fc_only: bool = False
    options: tuple[str, ...] = ()
    random: bool = False  # draws noise from the explicit key
    requires: tuple[str, ...] = ()  # options without a default (BroadCAM's fitted weights): "all" skips the method
    on_tokens: str = ""  # why the method does not apply to a Vision Transformer (token layers); "" where it does
    attention: bool = False  # reads a ViT's attention probabilities (Inputs.attn), captured in the same forward
    own_maps: bool = False  # reads the model's own class maps (Inputs.maps, Tapped.map_sites), same forward


PGC = "pytorch-grad-cam 1.5.7"

METHODS: dict[str, MethodSpec] = {
    "gradcam": MethodSpec("gradcam", gradient.gradcam, "gradient", "weighted", True, "1F+1B",
                          "Selvaraju et al., ICCV 2017", PGC),
    "gradcam++": MethodSpec("gradcam++", gradient.gradcam_plusplus, "gradient", "weighted", True, "1F+1B",
                            "Chattopadhay et al., WACV 2018", PGC),
    "xgradcam": MethodSpec("xgradcam", gradient.xgradcam, "gradient", "weighted", True, "1F+1B",
                           "Fu et al., BMVC 2020", PGC),
    "hirescam": MethodSpec("hirescam", gradient.hirescam, "gradient", "weighted", True, "1F+1B",
                           "Draelos & Carin, arXiv 2011.08891", PGC),
    "gradcam_elementwise": MethodSpec("gradcam_elementwise", gradient.gradcam_elementwise, "gradient", "weighted",
                                      True, "1F+1B", "pytorch-grad-cam", PGC),
    "layercam": MethodSpec("layercam", gradient.layercam, "gradient", "weighted", True, "1F+1B",
                           "Jiang et al., TIP 2021", PGC),
    "eigengradcam": MethodSpec("eigengradcam", gradient.eigengradcam, "gradient", "projection", True, "1F+1B",
                               "pytorch-grad-cam", PGC + ", up to the SVD sign"),
    "cam": MethodSpec("cam", gradient.cam, "gradient", "weighted", True, "1F+1B", "Zhou et al., CVPR 2016",
                      "closed form (= Grad-CAM x h*w on GAP+FC heads)", gap_fc_only=True),
    "shapleycam": MethodSpec("shapleycam", gradient.shapleycam, "gradient", "weighted", True, "1F+1B+HVP",
                             "Cai et al., arXiv 2501.06261", PGC + " (ReST target)", hvp=True, target="rest"),
    "finercam": MethodSpec("finercam", gradient.gradcam, "gradient", "weighted", True, "1F+1B",
                           "Zhang et al., CVPR 2025", PGC, target="finer", intrinsic_target=True),
    "diffgradcam": MethodSpec("diffgradcam", gradient.gradcam, "gradient", "weighted", True, "1F+1B",
                              "Piland et al., arXiv 2506.08514", "closed form + invariance tests",
                              target="logit_difference", intrinsic_target=True),
    "diffgradcam++": MethodSpec("diffgradcam++", gradient.gradcam_plusplus, "gradient", "weighted", True, "1F+1B",
                                "Piland et al., arXiv 2506.08514", "closed form + invariance tests",
                                target="logit_difference", intrinsic_target=True),
    "fullgrad": MethodSpec("fullgrad", fullgrad.fullgrad, "gradient", "whole_network", True, "1F+1B (to the input)",
                           "Srinivas & Fleuret, NeurIPS 2019", PGC,
                           on_tokens="its bias terms are per-channel biases of feature maps; on a ViT only the patch "
                                     "projection has one (LayerNorm and attention biases act on tokens), so the map "
                                     "would be little more than the input gradient"),
    "cameras": MethodSpec("cameras", multipass.cameras, "gradient", "multiscale", True, "S*(1F+1B)",
                          "Jalwana et al., CVPR 2021", "closed-form and behaviour tests", options=("scales",),
                          on_tokens="it runs the model at several input sizes, and a ViT's position embeddings fix "
                                    "one input size"),
    "metacam": MethodSpec("metacam", multipass.metacam, "ensemble", "ensemble", False, "sum of its members",
                          "Kaczmarek et al., arXiv 2307.16863", "closed-form tests (consensus); ROAD matches pytorch-grad-cam",
                          options=("members", "k", "delta", "adaptive", "k_grid", "percentiles")),
    "eigencam": MethodSpec("eigencam", activation.eigencam, "activation", "projection", False, "1F",
                           "Muhammad & Yeasin, IJCNN 2020", PGC + ", up to the SVD sign"),
    "scorecam": MethodSpec("scorecam", perturbation.scorecam, "perturbation", "weighted", False, "1F+K*F",
                           "Wang et al., CVPR-W 2020", PGC, full_forwards="K"),
    "faster_scorecam": MethodSpec("faster_scorecam", perturbation.faster_scorecam, "perturbation", "weighted", False,
                                  "1F+k*F", "Faster Score-CAM (top-variance channels)",
                                  "closed form (= Score-CAM with all channels)", full_forwards="top_fraction*K",
                                  options=("top_fraction",)),
    "sscam": MethodSpec("sscam", perturbation.sscam, "perturbation", "weighted", False, "1F+S*K*F",
                        "Wang et al., arXiv 2006.14255 (torchcam's form)", "closed-form and behaviour tests",
                        full_forwards="num_samples*K", options=("num_samples", "std"), random=True),
    "decomcam": MethodSpec("decomcam", perturbation.decomcam, "perturbation", "map", True, "1F+1B+Q*F",
                           "DecomCAM (SVD sub-saliency maps, integrated)", "closed-form and behaviour tests",
                           full_forwards="components", options=("channels", "components")),
    "micam": MethodSpec("micam", activation.micam, "activation", "weighted", False, "1F+K histograms",
                        "Iyer et al., arXiv 2507.09092", "closed-form tests", options=("bins",)),
    "ablationcam": MethodSpec("ablationcam", perturbation.ablationcam, "perturbation", "weighted", False,
                              "1F+K*F_h", "Desai & Ramaswamy, WACV 2020", PGC, head_passes="K"),
    "reciprocam": MethodSpec("reciprocam", perturbation.reciprocam, "perturbation", "map", False, "1F+hw*F_h",
                             "Byun & Lee, arXiv 2209.14074", "closed-form tests", head_passes="h*w",
                             options=("gaussian",)),
    "ssa": MethodSpec("ssa", ssa.ssa, "gradient", "map", True, "1F+1B+(hw)^2 affinity per layer",
                      "Sun & Li, arXiv 2111.03392 ([ours] affinity and fusion)",
                      "closed-form tests (block affinity = region means)", options=("base",)),
    "broadcam": MethodSpec("broadcam", broadcam.broadcam, "activation", "weighted", False,
                           "1F (after fit_broadcam: 1F per fitting image)", "Lin et al., arXiv 2309.03509",
                           "closed-form tests (ridge solutions, BLS fold-back)", options=("weights",),
                           requires=("weights",)),
    "adcam": MethodSpec("adcam", adcam.adcam, "gradient", "map", True, "1F+1B+t*(hw)^2",
                        "Huang et al., arXiv 2211.10931 ([ours] reconstruction)",
                        "closed-form tests (identity attention = base CAM)", options=("base", "steps"),
                        attention=True),
    "amecam": MethodSpec("amecam", own_maps.amecam, "model", "map", False, "1F (the model's exits and aggregator)",
                         "Chen et al., MICCAI 2023 (arXiv 2306.14505)",
                         "closed-form tests (the module's own map); trained by jaxcam.train.ame", own_maps=True),
    "sycam": MethodSpec("sycam", sycam.sycam, "synthesised", "weighted", True,
                        "1F+1B (+K*F if it reads S, +K*F_h if it reads D)",
                        "Luque-Cerpa et al., arXiv 2504.09998 ([ours] grammar)",
                        "closed-form tests (known CAMs as expressions)", options=("expression",),
                        requires=("expression",)),
}


def gradient_methods() -> list[str]:
    """The single-pass gradient methods that take any target layer of any model (not CAM, which needs a GAP+FC
    head; not FullGrad or CAMERAS, which run their own passes; not AD-CAM, which needs a ViT's attention)."""
    return [n for n, s in METHODS.items() if s.family == "gradient" and not s.gap_fc_only and not s.attention
            and s.output in ("weighted", "projection", "map")]


__all__ = ["METHODS", "MethodSpec", "gradient_methods"]


def markdown_table() -> str:
    """The README's method table, generated from the registry (a test keeps the README in sync)."""
    rows = ["| method | family | passes per image | paper | parity |", "|---|---|---|---|---|"]
    for name, s in METHODS.items():
        rows.append(f"| `{name}` | {s.family} | {s.cost} | {s.paper} | {s.parity} |")
    return "\n".join(rows)


__all__ += ["markdown_table"]
