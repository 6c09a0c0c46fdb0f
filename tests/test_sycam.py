"""SyCAM: the expression language (types, printing, parsing, saving), the registered method (known CAMs written as
expressions give the built-in methods' maps), and the search (equivalence pruning, batch scoring, determinism)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxcam
from jaxcam.errors import CorruptFileError, InvalidArgumentError, UnknownNameError
from jaxcam.sycam import KNOWN, Expr, Grammar, as_expr, load, parse, save, synthesize, terminal
from jaxcam.sycam.search import Scorer, compute_terminals, held_out


@pytest.fixture(scope="module")
def tiny():
    from jaxcam.synthetic import synthetic_arrays

    model = jaxcam.reference_model(0, size=32, widths=(4, 8, 8))
    data = synthetic_arrays(0, 12, size=32)
    return model, data


# ---------------------------------------------------------------------------------------------- the language

@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_formulas_print_and_parse_back(name):
    e = parse(KNOWN[name])
    assert e.kind == "channel"
    assert parse(str(e)) == e
    assert str(e) == KNOWN[name]


def test_printing_keeps_the_tree_shape():
    a, g = terminal("A"), terminal("G")
    right = Expr("-", (Expr("mean", (a,)), Expr("-", (Expr("mean", (g,)), Expr("const", (), 1.0)))))
    assert str(right) == "mean(A) - (mean(G) - 1)"
    assert parse(str(right)) == right
    left = (Expr("mean", (a,)) - Expr("mean", (g,))) - 1
    assert str(left) == "mean(A) - mean(G) - 1"
    assert parse(str(left)) == left
    assert parse("sum(G * (A + G2))").args[0].args[1].op == "+"


@pytest.mark.parametrize("formula, error, words", [
    ("softmax(G)", InvalidArgumentError, "reduce"),
    ("mean(S)", InvalidArgumentError, "spatial"),
    ("mean(Q)", UnknownNameError, "Q"),
    ("mean(G", InvalidArgumentError, r"expected '\)'"),
    ("mean(G) +", InvalidArgumentError, "unexpected"),
    ("mean(G) mean(A)", InvalidArgumentError, "unexpected"),
    ("", InvalidArgumentError, "non-empty"),
])
def test_bad_formulas_are_clear_errors(formula, error, words):
    with pytest.raises(error, match=words):
        parse(formula)


def test_weights_must_be_channel_typed():
    from jaxcam.sycam import check_weights

    with pytest.raises(InvalidArgumentError, match="spatial"):
        check_weights("G * A")
    with pytest.raises(InvalidArgumentError, match="Expr, a formula"):
        as_expr([1, 2])


def test_safe_division_and_norm_never_give_nan():
    from jaxcam.sycam import evaluate

    g = np.zeros((2, 2, 3), np.float32)
    a = np.ones((2, 2, 3), np.float32)
    w = np.asarray(evaluate(parse("sum(G) / sum(G) + norm(mean(G))"), {"G": g, "A": a}))
    assert np.all(np.isfinite(w)) and np.all(w == 0)
    n = np.asarray(evaluate(parse("norm(A)"), {"A": a}))
    assert np.all(n == 0)  # a constant channel normalises to 0, not 0/0


def test_save_and_load_round_trip(tmp_path: Path):
    e = parse(KNOWN["gradcam++"])
    path = save(tmp_path / "w.json", e, {"metric": "iou"})
    assert load(path) == e
    doc = json.loads(path.read_text())
    assert doc["formula"] == str(e) and doc["metadata"] == {"metric": "iou"}
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("content, words", [
    ("{not json", "not a SyCAM expression file"),
    ('{"format": "other"}', "expected format"),
    ('{"format": "jaxcam.sycam/1", "tree": {"op": "mean", "args": [{"op": "Z"}]}}', "invalid"),
    ('{"format": "jaxcam.sycam/1", "formula": "mean(A)", "tree": {"op": "mean", "args": [{"op": "G"}]}}',
     "disagree"),
])
def test_corrupt_expression_files_are_clear_errors(tmp_path: Path, content, words):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(CorruptFileError, match=words):
        load(p)


# ---------------------------------------------------------------------------------------------- the method

def test_known_expressions_give_the_builtin_methods_maps(tiny):
    model, data = tiny
    x = data["image"][:4]
    builtin = jaxcam.explain(model, x, list(KNOWN))
    for name, formula in KNOWN.items():
        got = jaxcam.explain(model, x, "sycam", method_options={"sycam": {"expression": formula}})
        np.testing.assert_allclose(got, builtin[name], atol=2e-5, err_msg=name)


def test_sycam_takes_a_saved_file_and_needs_an_expression(tiny, tmp_path: Path):
    model, data = tiny
    x = data["image"][:2]
    path = save(tmp_path / "g.json", "mean(G)")
    np.testing.assert_allclose(jaxcam.explain(model, x, "sycam", method_options={"sycam": {"expression": path}}),
                               jaxcam.explain(model, x, "gradcam"), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="expression"):
        jaxcam.explain(model, x, "sycam")
    from jaxcam._explain import _configure

    _, names = _configure(model, "all", None)
    assert "sycam" not in names and "gradcam" in names  # "all" skips a method whose required option is missing


def test_an_overflowing_expression_gives_a_finite_map(tiny):
    model, data = tiny
    maps = jaxcam.explain(model, data["image"][:2], "sycam",
                          method_options={"sycam": {"expression": "max(G3) / 0.5 * 1e+30 * 1e+30"}})
    assert np.all(np.isfinite(np.asarray(maps)))


# ---------------------------------------------------------------------------------------------- the search

def test_terminals_match_their_definitions(tiny):
    model, data = tiny
    x = model.preprocess(data["image"][:3])
    values, cls = compute_terminals(model, x, data["label"][:3], names=("G2", "S", "D"), chunk=2)
    assert set(values) == {"A", "G2", "S", "D"} and values["A"].shape[0] == 3
    assert values["S"].shape == values["D"].shape == (3, values["A"].shape[-1])
    np.testing.assert_array_equal(cls, data["label"][:3])
    g, _ = compute_terminals(model, x, data["label"][:3], names=("G",))
    np.testing.assert_allclose(values["G2"], g["G"] ** 2, rtol=1e-5, atol=1e-12)


def test_equivalent_expressions_are_pruned_and_gradcam_is_matched(tiny):
    model, data = tiny
    grammar = Grammar(terminals=("A", "G"), constants=(2.0,), unary=("mean", "relu"), binary=("+", "*"))
    r = synthesize(model, data["image"], masks=data["mask"], labels=data["label"], grammar=grammar, max_size=4,
                   rounds=1, beam=4, score_batch=16)
    assert r.pruned > 0            # e.g. G + G and G * 2 draw the same values: one is kept
    assert r.scored < r.enumerated
    assert r.best_score >= r.known["gradcam"] - 1e-9  # mean(G) is a candidate: the winner is at least as good
    assert r.candidates_per_second > 0 and r.by_stage[0]["new_scored"] > 0
    again = synthesize(model, data["image"], masks=data["mask"], labels=data["label"], grammar=grammar,
                       max_size=4, rounds=1, beam=4, score_batch=16)
    assert again.best == r.best and again.best_score == r.best_score
    assert "candidates scored" in r.summary()


def test_the_winner_runs_as_a_method_on_held_out_images(tiny):
    model, data = tiny
    r = synthesize(model, data["image"][:8], masks=data["mask"][:8], labels=data["label"][:8],
                   grammar=Grammar(terminals=("A", "G"), unary=("mean", "abs"), binary=("*",)), max_size=3,
                   rounds=0, score_batch=8)
    scores = held_out(model, data["image"][8:], r.best, masks=data["mask"][8:], labels=data["label"][8:],
                      methods=("gradcam",))
    assert set(scores) == {"sycam", "gradcam"} and scores["sycam"].shape == (4,)
    # the search scorer and jaxcam.evaluate agree on the same images
    same = held_out(model, data["image"][:8], r.best, masks=data["mask"][:8], labels=data["label"][:8],
                    methods=())
    np.testing.assert_allclose(np.nanmean(same["sycam"]), r.best_score, rtol=1e-4, atol=1e-6)


def test_search_inputs_are_checked(tiny):
    model, data = tiny
    with pytest.raises(UnknownNameError):
        Grammar(unary=("sqrt",))
    with pytest.raises(InvalidArgumentError, match="tuple of names"):
        Grammar(terminals="AG")
    with pytest.raises(UnknownNameError):
        synthesize(model, data["image"], metric="no_such_metric")
    with pytest.raises(InvalidArgumentError, match="max_size"):
        synthesize(model, data["image"], max_size=0)
    x = model.preprocess(data["image"][:2])
    acts = np.zeros((2, 4, 4, 8), np.float32)
    with pytest.raises(InvalidArgumentError, match="needs masks"):
        Scorer(model, x, np.zeros(2, np.int32), acts, "iou")
    with pytest.raises(InvalidArgumentError, match="masks must be"):
        Scorer(model, x, np.zeros(2, np.int32), acts, "iou", masks=np.zeros((2, 8, 8), bool))
    with pytest.raises(InvalidArgumentError, match="re-explains"):
        Scorer(model, x, np.zeros(2, np.int32), acts, "max_sensitivity")


def test_a_model_metric_guides_the_search_in_its_direction(tiny):
    """average_drop is lower-is-better: the winner's score is at most Grad-CAM's, and the scoring batch is capped so
    a call runs at most max_images_per_call forwards."""
    model, data = tiny
    r = synthesize(model, data["image"][:6], metric="average_drop", labels=data["label"][:6],
                   grammar=Grammar(terminals=("A", "G"), constants=(), unary=("mean", "relu"), binary=("*",)),
                   max_size=3, rounds=0, max_images_per_call=24)
    assert not r.higher_is_better
    assert r.best_score <= r.known["gradcam"] + 1e-9
    assert [s for _, s in r.top] == sorted(s for _, s in r.top)
