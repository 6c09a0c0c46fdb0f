"""Stability metrics, MetaCAM's subset analysis and CRE, and jaxcam.evaluate's tidy table."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics as M
from jaxcam.metrics.ensemble import all_subsets

from .toy import toy_input, toy_model


def test_sensitivity_and_lipschitz_are_keyed_ordered_and_scale_with_noise():
    model, x = toy_model(), toy_input(2, 32)
    s = M.sensitivity(model, x, "gradcam", samples=4, radius=0.05, key=3)
    s2 = M.sensitivity(model, x, "gradcam", samples=4, radius=0.05, key=3)
    np.testing.assert_array_equal(s.max, s2.max)
    assert (np.asarray(s.avg) <= np.asarray(s.max) + 1e-7).all() and (np.asarray(s.avg) > 0).all()
    big = M.sensitivity(model, x, "gradcam", samples=4, radius=0.5, key=3)
    assert (np.asarray(big.avg) > np.asarray(s.avg)).all()
    other = M.sensitivity(model, x, "gradcam", samples=4, radius=0.05, key=4)
    assert not np.array_equal(np.asarray(other.max), np.asarray(s.max))
    lip = M.local_lipschitz(model, x, "gradcam", samples=3, std=0.1, key=0)
    assert lip.shape == (2,) and np.isfinite(np.asarray(lip)).all()
    with pytest.raises(ValueError, match="samples"):
        M.sensitivity(model, x, samples=0)
    with pytest.raises(jaxcam.UnknownNameError):
        M.local_lipschitz(model, x, "gradkam")


def test_sensitivity_recomputes_the_explained_class_of_the_clean_image():
    """One noisy draw by hand: explain(x + noise) for the clean class, relative Frobenius distance."""
    model, x = toy_model(), toy_input(2, 32)
    cls = np.asarray(jnp.argmax(model(x), -1))
    given = M.sensitivity(model, x, "gradcam", targets=list(cls), samples=3, key=5)
    default = M.sensitivity(model, x, "gradcam", samples=3, key=5)
    np.testing.assert_allclose(given.max, default.max, rtol=1e-6)


def test_cre_from_a_mapping_by_hand():
    scores = {("a",): 0.1, ("b",): 0.3, ("a", "b"): 0.5, "c": 0.0, "a+c": 0.2}
    t = M.cumulative_residual_effect(scores)
    rows = {r["member"]: r for r in t.rows()}
    # a: {b}->{a,b}: 0.2; {c}->{a,c}: 0.2 ; b: {a}->{a,b}: 0.4 ; c: {a}->{a,c}: 0.1
    assert rows["a"]["pairs"] == 2 and rows["a"]["cre"] == pytest.approx(0.4)
    assert rows["b"]["cre"] == pytest.approx(0.4) and rows["b"]["pairs"] == 1
    assert rows["c"]["mean_residual"] == pytest.approx(0.1)
    assert len(all_subsets("abcd")) == 15 and len(all_subsets("abcd", max_size=2)) == 10


def test_subset_scores_equal_road_of_each_metacam_map():
    from jaxcam.methods.multipass import metacam

    model, x = toy_model(), toy_input(2, 32)
    maps = jaxcam.explain(model, x, ["gradcam", "layercam", "hirescam"], preprocessed=True)
    t = M.subset_scores(model, x, maps, percentiles=(30, 70), k=0.2)
    assert len(t) == 7 * 2 and set(t.columns) == {"subset", "size", "image", "score"}
    pair = t.where(subset="gradcam+hirescam")["score"]
    direct = M.road(model, x, metacam([maps["gradcam"], maps["hirescam"]], 0.2), which="combined",
                    percentiles=(30, 70), noise=0.0)
    np.testing.assert_allclose(pair, direct, atol=1e-6)
    cre = M.cumulative_residual_effect(t)
    assert list(cre["member"]) == ["gradcam", "hirescam", "layercam"] and (cre["pairs"] == 3).all()


def test_evaluate_table_matches_the_metric_functions():
    model, x = toy_model(), toy_input(2, 32)
    metrics = ["deletion_auc", "insertion_auc", "road_combined", "road_morf", "road_lerf", "average_drop",
               "sparseness", "pointing_game", "max_sensitivity"]
    t = jaxcam.evaluate(model, x, ["gradcam", "layercam"], metrics, preprocessed=True, boxes=[[0, 0, 16, 16]] * 2,
                        metric_options={"road": {"percentiles": (20, 80)}, "deletion_insertion": {"steps": 5},
                                        "sensitivity": {"samples": 2}})
    assert t.columns == ["image", "class", "method", "metric", "value", "higher_is_better"]
    assert len(t) == 2 * 2 * len(metrics)
    maps = jaxcam.explain(model, x, ["gradcam", "layercam"], preprocessed=True)
    c = M.deletion_insertion(model, x, maps["layercam"], steps=5)
    np.testing.assert_allclose(t.where(method="layercam", metric="insertion_auc")["value"], c.insertion_auc,
                               rtol=1e-5)
    road = M.road(model, x, maps["gradcam"], which="combined", percentiles=(20, 80), key=0)
    np.testing.assert_allclose(t.where(method="gradcam", metric="road_combined")["value"], road, rtol=1e-4, atol=1e-6)
    lerf = t.where(method="gradcam", metric="road_lerf")["value"]
    morf = t.where(method="gradcam", metric="road_morf")["value"]
    np.testing.assert_allclose((lerf - morf) / 2, road, rtol=1e-4, atol=1e-6)
    assert not t.where(metric="deletion_auc")["higher_is_better"].any()


def test_evaluate_errors():
    model, x = toy_model(), toy_input(2, 32)
    with pytest.raises(jaxcam.UnknownNameError, match="metric"):
        jaxcam.evaluate(model, x, "gradcam", ["insertion"], preprocessed=True)
    with pytest.raises(ValueError, match="masks= or boxes="):
        jaxcam.evaluate(model, x, "gradcam", ["iou"], preprocessed=True)
    with pytest.raises(jaxcam.UnknownNameError, match="metric_options group"):
        jaxcam.evaluate(model, x, "gradcam", ["sparseness"], preprocessed=True, metric_options={"dele": {}})
    with pytest.raises(jaxcam.UnknownNameError, match="method"):
        jaxcam.evaluate(model, x, "nocam", ["sparseness"], preprocessed=True)


def test_table_roundtrips():
    t = jaxcam.Table.from_rows([{"a": 1, "b": "x"}, {"a": 2, "b": "y", "c": 0.5}])
    assert t.columns == ["a", "b", "c"] and len(t) == 2 and t.rows()[0]["c"] is None
    assert t.to_csv().splitlines()[0] == "a,b,c"
    assert "| 2 | y | 0.5 |" in t.to_markdown()
    assert jaxcam.Table.concat([t, t]).where(a=2)["b"].tolist() == ["y", "y"]
    with pytest.raises(ValueError, match="differ in length"):
        jaxcam.Table({"a": [1, 2], "b": [1]})
    with pytest.raises(KeyError, match="columns"):
        t["z"]


def test_readme_metric_table_is_generated_from_the_registry():
    import os

    from jaxcam.evaluate import markdown_table

    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        assert markdown_table() in f.read(), "regenerate README's metric table from jaxcam.evaluate.markdown_table()"
