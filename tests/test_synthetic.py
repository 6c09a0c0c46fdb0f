"""The synthetic localisation benchmark: determinism, ground truth consistent with the pixels, the spurious cue's
train/test contract, random access, the source interface, and the reference CNN's CAM layer."""

import numpy as np
import pytest

import jaxcam
from jaxcam.datasets import get_source
from jaxcam.synthetic import MARGIN, SYNTHETIC_CLASSES, synthetic_arrays, synthetic_at, synthetic_source


def test_same_key_same_bits_other_key_other_images():
    a, b = synthetic_arrays(3, 12), synthetic_arrays(3, 12)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], synthetic_arrays(4, 12)["image"])
    assert not np.array_equal(a["image"], synthetic_arrays(3, 12, split="test")["image"])


def test_random_access_matches_the_whole():
    whole = synthetic_arrays(0, 20, num_classes=6)
    part = synthetic_at(0, [17, 2, 9], num_classes=6)
    for k in whole:
        assert np.array_equal(part[k], whole[k][[17, 2, 9]])


def test_ground_truth_matches_the_pixels():
    d = synthetic_arrays(1, 64, size=48, num_classes=8, clutter=False)
    assert set(np.unique(d["label"])) <= set(range(8)) and len(np.unique(d["label"])) > 4
    for img, mask, box in zip(d["image"], d["mask"], d["box"]):
        assert mask.sum() > 40                                     # an object of real size
        y0, x0, y1, x1 = box
        ys, xs = np.nonzero(mask)
        assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        margin = int(MARGIN * 48) - 1
        assert y0 >= margin and x0 >= margin and y1 <= 48 - margin and x1 <= 48 - margin
        # without clutter the object is the bright region: every object pixel is brighter than the background mean
        assert img[mask].mean() > img[~mask].mean() + 0.2


def test_spurious_cue_predicts_the_label_in_train_only():
    tr = synthetic_arrays(0, 200, spurious=True, split="train")
    te = synthetic_arrays(0, 200, spurious=True, split="test")
    colour = lambda d: np.array([img[cue].reshape(-1, 3).mean(0) for img, cue in zip(d["image"], d["cue"])])  # noqa
    pal = jaxcam.synthetic.CUE_COLOURS[:4]
    guess = lambda d: np.argmin(((colour(d)[:, None] - pal[None]) ** 2).sum(-1), axis=1)  # noqa: E731
    assert np.mean(guess(tr) == tr["label"]) == 1.0
    assert np.mean(guess(te) == te["label"]) < 0.45             # chance is 0.25
    assert not synthetic_arrays(0, 5)["cue"].any()


def test_decoy_shapes_leave_only_the_cue_to_give_the_label_in_train():
    base = synthetic_arrays(0, 256, spurious=True)
    half = synthetic_arrays(0, 256, spurious=True, decoy_shapes=0.5)
    every = synthetic_arrays(0, 256, spurious=True, decoy_shapes=1.0)
    for d in (half, every):  # labels, cue and boxes' neighbourhood unchanged; only some objects' shapes differ
        assert np.array_equal(d["label"], base["label"]) and np.array_equal(d["cue"], base["cue"])
        np.testing.assert_array_equal(d["image"][d["cue"]], base["image"][base["cue"]])
    same = lambda d: np.array([np.array_equal(a, b) for a, b in zip(d["mask"], base["mask"])])  # noqa: E731
    assert 0.5 < same(half).mean() < 0.75   # 1/2 + 1/2 * 1/4 keep the label's shape
    assert 0.15 < same(every).mean() < 0.35  # the label's shape only by chance
    test = synthetic_arrays(0, 256, spurious=True, split="test")
    for k, v in synthetic_arrays(0, 256, spurious=True, split="test", decoy_shapes=1.0).items():
        assert np.array_equal(v, test[k]), k  # never in the test split
    with pytest.raises(jaxcam.InvalidArgumentError, match="spurious=True"):
        synthetic_arrays(0, 4, decoy_shapes=0.5)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"\[0, 1\]"):
        synthetic_arrays(0, 4, spurious=True, decoy_shapes=1.5)


def test_source_batches_carry_masks_and_the_spec_string():
    src = synthetic_source(10, key=2, num_classes=3)
    assert len(src) == 10 and src.classes == SYNTHETIC_CLASSES[:3]
    batches = list(src.batches(4, size=32))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    assert batches[0]["mask"].shape == (4, 32, 32) and batches[0]["image"].shape == (4, 32, 32, 3)
    direct = synthetic_at(2, range(4, 8), size=32, num_classes=3)
    assert np.array_equal(batches[1]["image"], direct["image"])
    again = list(src.batches(4, size=32, skip_ids={0, 1}))
    assert again[0]["id"].tolist() == [2, 3, 4, 5]
    assert get_source("synthetic:7:test").name == "synthetic:7:test"


@pytest.mark.parametrize("kwargs, match", [({"num_classes": 9}, "at most 8"), ({"size": 8}, "size"),
                                           ({"split": "val"}, "split")])
def test_bad_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(jaxcam.JaxcamError, match=match):
        synthetic_arrays(0, 4, **kwargs)


def test_bad_spec():
    with pytest.raises(jaxcam.InvalidArgumentError, match="synthetic:N"):
        get_source("synthetic:many")


def test_reference_model_is_a_linen_model_with_a_gap_fc_cam_layer():
    m = jaxcam.reference_model(0)
    assert m.default_layer == "stage3" and "stage3" in m.tapped.gap_fc_sites
    imgs = synthetic_arrays(0, 2)["image"]
    out = jaxcam.explain(m, list(imgs), method=["gradcam", "cam"])
    np.testing.assert_allclose(out["gradcam"], out["cam"], atol=1e-5)  # CAM's closed form on a GAP+FC head
