"""Evaluation metrics for saliency maps: per-example pure functions, vmapped and chunked inside compiled programs.

Faithfulness: :func:`deletion_insertion`, :func:`road`, :func:`average_drop`, :func:`increase_in_confidence`,
:func:`cam_mult_confidence_change`, :func:`relative_confidence_drop`, :func:`faithfulness_correlation`,
:func:`subset_scores` / :func:`cumulative_residual_effect` (MetaCAM).
Localisation: :func:`pointing_game`, :func:`energy_pointing_game`, :func:`relevance_mass_accuracy`,
:func:`relevance_rank_accuracy`, :func:`iou`.
Sanity: :func:`cascading_randomisation`, :func:`independent_randomisation`.
Complexity: :func:`sparseness`, :func:`entropy`.
Stability: :func:`sensitivity`, :func:`local_lipschitz`, and the map similarities of :mod:`.similarity`
(:func:`compare_maps` over batches; Spearman, Pearson, SSIM, HOG, top-k IoU, normalised L1).
Statistics: :mod:`.statistics` (Friedman with Nemenyi, Wilcoxon-Holm, Kruskal-Wallis, bootstrap intervals).
:func:`jaxcam.evaluate` runs methods and metrics together into one tidy table. Every name in
:data:`jaxcam.METRICS` is also a function here, called as its ``needs`` says: ``(model, x, maps, targets=None)``
("model"), ``(model, x, method, targets=None)`` ("method"), ``(maps, masks)`` ("masks") or ``(maps)`` ("maps").
"""

from .ablation import ABLATIONS, ablate, region_ablation, region_ablation_drop
from .complexity import entropy, sparseness
from .confidence import (average_drop, cam_mult_confidence_change, faithfulness_correlation, increase_in_confidence,
                         relative_confidence_drop)
from .deletion import Curves, deletion_auc, deletion_insertion, insertion_auc, rise_blur
from .ensemble import cumulative_residual_effect, subset_scores
from .inputs import boxes_to_masks
from .localisation import energy_pointing_game, iou, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .robustness import (ROBUSTNESS_SIMILARITIES, quickshift_regions, rbo, rbo_regions, region_scores,
                         robustness_similarity, summary_table)
from .robustness import summarise as robustness_summary
from .road import PERCENTILES, impute, road, road_combined, road_combined_scores, road_lerf, road_morf, road_scores
from .sanity import cascading_randomisation, independent_randomisation, randomise, stage_parameters
from .similarity import (SIMILARITIES, hog, hog_pearson, hog_spearman, normalised_l1, pearson, spearman, spearman_abs,
                         ssim, topk_iou)
from .similarity import similarity as compare_maps
from .stability import Sensitivity, avg_sensitivity, local_lipschitz, max_sensitivity, sensitivity
from .statistics import (bootstrap_ci, bootstrap_table, friedman, kruskal, nemenyi, wilcoxon,
                         wilcoxon_holm)

__all__ = [
    "PERCENTILES", "Curves", "Sensitivity", "average_drop", "boxes_to_masks", "cam_mult_confidence_change",
    "cumulative_residual_effect", "deletion_auc", "deletion_insertion", "insertion_auc", "road_morf", "road_lerf",
    "road_combined_scores", "max_sensitivity", "avg_sensitivity", "energy_pointing_game", "entropy", "faithfulness_correlation",
    "impute", "increase_in_confidence", "iou", "local_lipschitz", "pointing_game", "relative_confidence_drop",
    "relevance_mass_accuracy", "relevance_rank_accuracy", "rise_blur", "road", "road_combined", "road_scores",
    "sensitivity", "sparseness", "subset_scores", "bootstrap_ci", "bootstrap_table", "friedman", "kruskal", "nemenyi",
    "wilcoxon", "wilcoxon_holm", "SIMILARITIES", "cascading_randomisation", "compare_maps", "hog", "hog_pearson",
    "hog_spearman", "independent_randomisation", "normalised_l1", "pearson", "randomise", "spearman", "spearman_abs",
    "ssim", "stage_parameters", "topk_iou", "ROBUSTNESS_SIMILARITIES", "quickshift_regions", "rbo", "rbo_regions",
    "region_scores", "robustness_similarity", "robustness_summary", "summary_table",
    "ABLATIONS", "ablate", "region_ablation", "region_ablation_drop",
]
