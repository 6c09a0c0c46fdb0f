"""cam_regions on hand-made maps: thresholds, connected components, areas, ranking, snapping and errors."""

import numpy as np
import pytest

from jaxcam.errors import InvalidArgumentError, MapError, UnknownNameError
from jaxcam.regions import EmptyRegionsError, cam_regions


def _two_blobs():
    cam = np.zeros((12, 12), np.float32)
    cam[1:4, 1:4] = 0.7  # 9 px, mean 0.7
    cam[6:11, 6:10] = 0.9  # 20 px, mean 0.9
    cam[8, 1] = 0.6  # 1 px
    return cam


def test_components_areas_scores_and_ranking():
    r = cam_regions(_two_blobs(), threshold=0.5)
    assert r.count == 3
    np.testing.assert_array_equal(r.areas, [20, 9, 1])
    np.testing.assert_allclose(r.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    assert (r.labels == 1).sum() == 20 and r.labels[7, 7] == 1
    assert r.labels[2, 2] == 2 and r.labels[8, 1] == 3 and r.labels[0, 0] == 0
    assert r.threshold == 0.5
    assert r.mask().sum() == 30
    np.testing.assert_array_equal(r.masks(5).sum(axis=(1, 2)), [20, 9, 1, 0, 0])


def test_min_area_max_regions_and_threshold():
    cam = _two_blobs()
    assert cam_regions(cam, threshold=0.5, min_area=2).count == 2
    r = cam_regions(cam, threshold=0.5, max_regions=1)
    assert r.count == 1 and r.mask().sum() == 20
    r = cam_regions(cam, threshold=0.8)
    np.testing.assert_array_equal(r.areas, [20])


def test_eight_connectivity_joins_diagonal_pixels():
    cam = np.zeros((5, 5))
    cam[1, 1] = cam[2, 2] = cam[3, 3] = 1.0
    r = cam_regions(cam)
    assert r.count == 1 and r.areas[0] == 3


def test_ties_larger_first_then_raster_order():
    cam = np.zeros((10, 10))
    cam[0, 0] = 1.0  # 1 px, score 1
    cam[5:7, 5:7] = 1.0  # 4 px, score 1: larger ranks first
    cam[9, 9] = 1.0  # 1 px, later in raster order than (0, 0)
    r = cam_regions(cam)
    np.testing.assert_array_equal(r.areas, [4, 1, 1])
    assert r.labels[0, 0] == 2 and r.labels[9, 9] == 3


def test_top_fraction():
    cam = np.linspace(0, 1, 100).reshape(10, 10)
    r = cam_regions(cam, top=0.2)
    assert r.mask().sum() == 20 and r.mask()[-2:].all()


def test_quickshift_snap_follows_image_segments():
    pytest.importorskip("skimage")
    img = np.zeros((24, 24, 3), np.float32)
    img[:, 12:] = (1.0, 0.0, 0.0)  # two flat halves
    cam = np.zeros((24, 24))
    cam[4:20, 9:24] = 1.0  # covers most of the right half and spills 3 columns left
    r = cam_regions(cam, snap="quickshift", image=img, snap_options={"kernel_size": 2, "max_dist": 10})
    assert r.mask()[:, 12:].all() and not r.mask()[:, :12].any()


def test_errors():
    cam = _two_blobs()
    with pytest.raises(EmptyRegionsError, match="threshold=0.95"):
        cam_regions(cam, threshold=0.95)
    with pytest.raises(EmptyRegionsError, match="min_area=50"):
        cam_regions(cam, min_area=50)
    with pytest.raises(MapError, match="shape"):
        cam_regions(cam[None])
    with pytest.raises(MapError, match=r"\[0, 1\]"):
        cam_regions(cam * 3)
    with pytest.raises(MapError, match="NaN"):
        cam_regions(np.full((4, 4), np.nan))
    with pytest.raises(InvalidArgumentError, match="threshold"):
        cam_regions(cam, threshold=1.5)
    with pytest.raises(InvalidArgumentError, match="top"):
        cam_regions(cam, top=0.0)
    with pytest.raises(InvalidArgumentError, match="min_area"):
        cam_regions(cam, min_area=0)
    with pytest.raises(InvalidArgumentError, match="max_regions"):
        cam_regions(cam, max_regions=0)
    with pytest.raises(UnknownNameError, match="quickshift"):
        cam_regions(cam, snap="quickshif")
    with pytest.raises(InvalidArgumentError, match="image"):
        cam_regions(cam, snap="quickshift")
    with pytest.raises(InvalidArgumentError, match="image must be"):
        cam_regions(cam, snap="quickshift", image=np.zeros((5, 5, 3)))
    with pytest.raises(InvalidArgumentError, match="1..3"):
        cam_regions(cam).mask(4)
