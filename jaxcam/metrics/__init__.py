"""Evaluation metrics. So far: ROAD (used by MetaCAM's adaptive thresholding); the full metrics module is next."""

from .road import PERCENTILES, impute, road, road_combined, road_scores

__all__ = ["PERCENTILES", "impute", "road", "road_combined", "road_scores"]
