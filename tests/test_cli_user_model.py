"""A user's own model on the command line (``--model module.path:factory``), ``jaxcam layers``, and the page
docs/own-model.md, whose code blocks run here.

The user model is ``tests.user_models:tiny_cnn``, a plain function with a tap at 32 px. Every command that takes
``--model`` runs on it and gives what the Python API gives; a built-in reaches the same commands by name and
through a factory. Every bad spec is one ``jaxcam: error:`` line, exit 2, and nothing written.
"""

import os
import re
import shlex
import sys
from dataclasses import dataclass

import jax
import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam.cli import build_parser, main

from .user_models import CLASSES, tiny_cnn

SPEC = "tests.user_models:tiny_cnn"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "own-model.md")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two 32x32 PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxcam: error: "), err
    return lines[0]


# -- every command on the user model -----------------------------------------------------------------------------
def test_explain_gives_the_apis_maps(photos, tmp_path, capsys):
    rc, out, err = run(["explain", *photos, "--model", SPEC, "--method", "gradcam", "cam", "ablationcam",
                        "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "for 2 images x 3 methods" in out
    want = jaxcam.explain(tiny_cnn(), photos, ["gradcam", "cam", "ablationcam"])
    with np.load(tmp_path / "maps.npz") as npz:
        assert str(npz["model"]) == "tiny_cnn" and list(npz["layer"]) == ["conv2"]
        for method, maps in want.items():
            assert npz[method].shape == (2, 32, 32)
            np.testing.assert_allclose(npz[method], maps, atol=1e-6, err_msg=method)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png") and f != "grid.png"]) == 6


@pytest.mark.parametrize("layer, site", [("features", "conv2"), ("0", "conv1")])
def test_explain_takes_the_models_layer_names_aliases_and_indices(layer, site, photos, tmp_path, capsys):
    rc, _, err = run(["explain", photos[0], "--model", SPEC, "--layer", layer, "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    with np.load(tmp_path / "maps.npz") as npz:
        assert list(npz["layer"]) == [site]
        np.testing.assert_allclose(npz["gradcam"], jaxcam.explain(tiny_cnn(), photos[:1], layer=site), atol=1e-6)


def test_explain_names_the_user_models_layers_when_one_is_unknown(photos, tmp_path, capsys):
    rc, _, err = run(["explain", photos[0], "--model", SPEC, "--layer", "conv3", "--out", str(tmp_path / "o")],
                     capsys)
    line = one_error_line(err)
    assert rc == 2 and "'conv3'" in line and "did you mean 'conv2' or 'conv1'" in line
    assert not (tmp_path / "o").exists()


def test_predict_shows_the_models_own_class_names(photos, capsys):
    rc, out, err = run(["predict", *photos, "--model", SPEC, "-k", "2"], capsys)
    assert rc == 0, err
    assert out.startswith("tiny_cnn (tests.user_models)\n")
    pred = tiny_cnn().predict(photos, k=2)
    for name, probs, labels in zip("ab", pred.probs, pred.names):
        block = out.split(f"\n{name}\n")[1].splitlines()[:2]
        assert [line.split()[-1] for line in block] == labels and set(labels) <= set(CLASSES)
        assert [float(line.split()[0]) for line in block] == pytest.approx(probs, abs=1e-3)
    assert "predicted 2 image(s) with tiny_cnn" in out


def test_evaluate_writes_the_metrics_of_the_user_model(photos, tmp_path, capsys):
    out = tmp_path / "eval"
    rc, stdout, err = run(["evaluate", *photos, "--model", SPEC, "--methods", "gradcam", "--metrics", "sparseness",
                           "deletion_auc", "--out", str(out)], capsys)
    assert rc == 0, err
    assert "evaluate: 2 images x 1 methods x 2 metrics = 4 rows" in stdout
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and all(np.isfinite(float(r.split(",")[4])) for r in rows[1:])
    assert "tiny_cnn (tests.user_models)" in (out / "report.html").read_text(encoding="utf-8")


def test_robustness_runs_on_the_user_model(photos, tmp_path, capsys):
    out = tmp_path / "rob"
    rc, stdout, err = run(["robustness", *photos, "--model", SPEC, "--methods", "gradcam", "--noises", "gaussian",
                           "--severities", "1", "--draws", "1", "--chunk", "2", "--no-report", "--out", str(out)],
                          capsys)
    assert rc == 0, err
    assert "robustness: 2 images x 1 methods x 1 noises x 1 severities x 1 draws = 2 rows" in stdout
    assert len((out / "rows.csv").read_text().strip().splitlines()) == 1 + 2
    assert "tiny_cnn" in (out / "run.json").read_text()


# -- jaxcam layers -----------------------------------------------------------------------------------------------
TINY_LAYERS = """\
tiny_cnn (tests.user_models): 2 layers, output shapes (h x w x channels) at a 32x32 input
#  layer  also named  output   notes
-  -----  ----------  -------  ------------
0  conv1  -           16x16x8
1  conv2  features    8x8x16   default, cam
"""


def test_layers_lists_the_user_models_sites_shapes_default_and_cam(capsys):
    rc, out, err = run(["layers", "--model", SPEC], capsys)
    assert rc == 0, err
    assert out == TINY_LAYERS
    rc, out, _ = run(["layers", "--model", SPEC, "--markdown"], capsys)
    assert rc == 0 and out.splitlines() == [
        "| # | layer | also named | output at 32x32 | notes |", "|---|---|---|---|---|",
        "| 0 | conv1 | - | 16x16x8 |  |", "| 1 | conv2 | features | 8x8x16 | default, cam |"]


def _rows(text: str) -> list[str]:
    return text.splitlines()[1:]  # the header line names the source


def test_layers_of_a_built_in_needs_no_weights_and_matches_the_loaded_model(resnet18, capsys):
    rc, abstract, err = run(["layers", "--model", "resnet18"], capsys)
    assert rc == 0, err
    assert abstract.startswith("resnet18 (architecture; shapes only, no weights loaded): 13 layers")
    rc, loaded, err = run(["layers", "--model", "resnet18", "--random-weights"], capsys)
    assert rc == 0, err
    rc, factory, err = run(["layers", "--model", "tests.user_models:random_resnet18"], capsys)
    assert rc == 0, err
    assert _rows(abstract) == _rows(loaded) == _rows(factory)
    rows = {line.split()[1]: line for line in _rows(abstract)[2:]}
    assert re.fullmatch(r"11\s+layer4\.1\s+layer4\s+7x7x512\s+default, cam", rows["layer4.1"])
    assert rows["avgpool"].endswith("not an (h, w, channels) grid")
    for line in _rows(abstract)[2:]:
        index, name, also = line.split()[:3]
        assert resnet18.canonical_layer(name) == name == resnet18.canonical_layer(int(index))
        assert also == "-" or resnet18.canonical_layer(also) == name


def test_layers_of_the_default_model_marks_its_default_layer(embedded, capsys):
    rc, out, err = run(["layers"], capsys)
    assert rc == 0, err
    default = [line for line in out.splitlines() if "default" in line.split("  ")[-1]]
    assert len(default) == 1 and default[0].split()[1] == embedded.default_layer


def test_a_layer_the_forward_never_runs_is_listed_as_such():
    from jaxcam.cli import layers as cli_layers

    from . import user_models

    unused = user_models.Tapped(user_models.tiny_apply, ("conv1", "conv2", "head"), "conv2")
    info = cli_layers.describe(unused, user_models.tiny_params(), name="t", source="s", input_size=32)
    assert [(r.name, r.shape, r.notes) for r in info.layers] == [
        ("conv1", (16, 16, 8), ""), ("conv2", (8, 8, 16), "default"), ("head", None, "not called by the forward")]


# -- a built-in by name and through a factory --------------------------------------------------------------------
def test_a_built_in_through_a_factory_predicts_as_by_name(photos, capsys):
    rc, by_name, err = run(["predict", photos[0], "--model", "resnet18", "--random-weights", "-k", "3"], capsys)
    assert rc == 0, err
    rc, by_factory, err = run(["predict", photos[0], "--model", "tests.user_models:random_resnet18", "-k", "3"],
                              capsys)
    assert rc == 0, err
    assert by_factory == by_name and by_name.startswith("resnet18 (random weights")


# -- bad specs: one line, exit 2, nothing written ---------------------------------------------------------------
BAD_SPECS = {
    "no factory name": ("tests.user_models:", "is not a factory spec: write module.path:factory"),
    "no module": (":tiny_cnn", "is not a factory spec"),
    "a file path": ("tests/user_models.py:tiny_cnn", "is a file path: name the module as an import path, e.g. "
                                                     "tests.user_models:tiny_cnn"),
    "call syntax": ("tests.user_models:tiny_cnn()", "is not a factory spec"),
    "unknown module": ("jaxcam_no_such_module:build", "no module named 'jaxcam_no_such_module'; the module must be "
                                                      "importable: jaxcam_no_such_module.py"),
    "unknown submodule": ("tests.no_such:build", "no module named 'tests.no_such'"),
    "missing attribute": ("tests.user_models:tiny_cnm", "tests.user_models has no attribute 'tiny_cnm'; did you "
                                                        "mean 'tiny_cnn'"),
    "not callable": ("tests.user_models:NOT_CALLABLE", "tests.user_models.NOT_CALLABLE is an int, not a callable"),
    "needs arguments": ("tests.user_models:needs_arguments", "needs the argument(s) path, and --model calls it with "
                                                             "none"),
    "factory raises": ("tests.user_models:broken", "tests.user_models.broken() raised RuntimeError: weights file "
                                                   "tiny.npz not found; fix the factory"),
    "returns a dict": ("tests.user_models:not_a_model", "returned a dict, not a jaxcam.Model: return "
                                                        "jaxcam.Model.from_tapped"),
    "returns a Tapped": ("tests.user_models:tapped_only", "returned a Tapped, not a jaxcam.Model: a Tapped holds no "
                                                          "parameters"),
}


def snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_is_one_line_and_writes_nothing(case, photos, tmp_path, capsys):
    spec, message = BAD_SPECS[case]
    before = snapshot(tmp_path)
    rc, out, err = run(["explain", photos[0], "--model", spec, "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(err)
    assert rc == 2 and message in line and f"--model {spec!r}" in line, line
    assert out == "" and snapshot(tmp_path) == before and not (tmp_path / "out").exists()


COMMANDS = {
    "explain": ["explain", "{a}", "--out", "{out}"],
    "evaluate": ["evaluate", "{a}", "--methods", "gradcam", "--metrics", "sparseness", "--out", "{out}"],
    "robustness": ["robustness", "{a}", "--methods", "gradcam", "--noises", "gaussian", "--severities", "1",
                   "--draws", "1", "--out", "{out}"],
    "predict": ["predict", "{a}"],
    "layers": ["layers"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_bad_spec_and_weights_for_a_factory(command, photos, tmp_path, capsys):
    argv = [a.format(a=photos[0], out=tmp_path / "out") for a in COMMANDS[command]]
    for extra, message in ((["--model", "tests.user_models:broken"], "broken() raised RuntimeError"),
                           (["--model", SPEC, "--random-weights"], "--random-weights does not apply to --model "
                                                                   f"{SPEC!r}"),
                           (["--model", SPEC, "--weights", "resnet18.pth"], "--weights does not apply")):
        rc, out, err = run(argv + extra, capsys)
        assert rc == 2 and message in one_error_line(err) and out == ""
        assert not (tmp_path / "out").exists()


IMPORT_FAILURES = {
    "syntax error": ("def build(:\n", "importing '{mod}' raised SyntaxError"),
    "missing dependency": ("import jaxcam_no_such_dependency\n", "importing '{mod}' failed because a module it "
                                                                 "imports is missing"),
    "error at import": ("raise RuntimeError('no GPU found')\n", "importing '{mod}' raised RuntimeError: no GPU found; "
                                                                "fix the module"),
}


@pytest.mark.parametrize("case", list(IMPORT_FAILURES))
def test_a_module_that_fails_to_import_is_one_line(case, tmp_path, monkeypatch, capsys):
    source, message = IMPORT_FAILURES[case]
    mod = f"jaxcam_test_{case.replace(' ', '_')}"
    (tmp_path / f"{mod}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["layers", "--model", f"{mod}:build"], capsys)
    assert rc == 2 and message.format(mod=mod) in one_error_line(err)
    assert mod not in sys.modules and str(tmp_path) not in sys.path


def test_the_current_directory_is_on_sys_path_while_the_factory_loads(tmp_path, monkeypatch, capsys):
    mod = "jaxcam_test_cwd_models"
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / f"{mod}.py").write_text("from tests.user_models import tiny_cnn as build\n")
    monkeypatch.chdir(tmp_path / "here")
    try:
        rc, out, err = run(["layers", "--model", f"{mod}:build"], capsys)
        assert rc == 0 and out == TINY_LAYERS, err
        assert str(tmp_path / "here") not in sys.path  # taken off again
    finally:
        sys.modules.pop(mod, None)
    monkeypatch.chdir(tmp_path)  # elsewhere, the module is not found
    rc, _, err = run(["layers", "--model", f"{mod}:build"], capsys)
    assert rc == 2 and f"no module named '{mod}'" in one_error_line(err)
    assert f"in the current directory {str(tmp_path)!r}" in err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_says_what_a_factory_spec_is(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("module.path:factory", "returning a jaxcam.Model", "current directory is put on sys.path as "
                  "python -m does", "not for a module:factory model"):
        assert words in text, words


# -- docs/own-model.md -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    code: str
    requires: tuple[str, ...] = ()
    file: str | None = None


def doc_blocks(path: str = DOC) -> list[Block]:
    """The fenced blocks of a docs page, with the section they sit in and the marker comment just above them:
    ``<!-- file: NAME -->`` (the block is that file's content) or ``<!-- requires: jaxcam.NAME package ... -->``
    (the block runs only when ``jaxcam`` exports NAME and each package imports)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, section, marker, i = [], "", "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("<!--"):
            marker = line
        elif line.startswith("```"):
            end = lines.index("```", i + 1)
            found = re.fullmatch(r"<!-- (file|requires): (.+) -->", marker)
            kind, value = found.groups() if found else (None, "")
            blocks.append(Block(section, line[3:].strip(), "\n".join(lines[i + 1:end]) + "\n",
                                tuple(value.split()) if kind == "requires" else (),
                                value if kind == "file" else None))
            i, marker = end, ""
        elif line.strip():
            marker = ""
        i += 1
    return blocks


def missing(requires) -> list[str]:
    import importlib.util

    return [r for r in requires if (not hasattr(jaxcam, r.split(".", 1)[1]) if r.startswith("jaxcam.")
                                    else importlib.util.find_spec(r) is None)]


@pytest.fixture(scope="module")
def doc_folder(tmp_path_factory):
    """A folder holding the page's files; their modules are imported once for the module's tests (so compiled
    programs are shared between them) and forgotten afterwards."""
    folder = tmp_path_factory.mktemp("doc")
    files = [b for b in doc_blocks() if b.file]
    for b in files:
        (folder / b.file).write_text(b.code)
    rng = np.random.default_rng(1)
    for photo in ("cat.jpg", "dog.jpg"):  # the photos the page's commands name
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / photo)
    names = [os.path.splitext(b.file)[0] for b in files]
    for n in names:
        sys.modules.pop(n, None)
    yield folder
    for n in names:
        sys.modules.pop(n, None)


@pytest.fixture
def doc_dir(doc_folder, monkeypatch):
    """The page's folder as the current directory. The page's code broadcasts as JAX does by default (the
    suite's conftest makes rank promotion an error)."""
    monkeypatch.chdir(doc_folder)
    with jax.numpy_rank_promotion("allow"):
        yield doc_folder


PYTHON = [b for b in doc_blocks() if b.lang == "python" and not b.file]


def test_the_page_has_its_sections_and_marks_the_adapter_examples():
    blocks = doc_blocks()
    assert [b.file for b in blocks if b.file] == ["my_models.py"]
    sections = {b.section for b in PYTHON}
    for name in ("A plain function with a tap", "Flax linen", "Flax NNX", "Hugging Face ViT", "Hugging Face ResNet",
                 "A `checkpoint_name` marker in any function", "Equinox", "Training mode, and why jaxcam refuses it",
                 "Detection and segmentation targets"):
        assert name in sections, name
    for b in PYTHON:
        for fn in ("from_linen", "from_nnx", "from_hf", "from_function", "from_equinox", "layers("):
            if f"jaxcam.{fn}" in b.code:
                assert f"jaxcam.{fn.rstrip('(')}" in b.requires, (b.section, fn)
    text = open(DOC, encoding="utf-8").read()
    assert "layernorm_before" in text and "zero gradient" in text  # which layer on a ViT


@pytest.mark.parametrize("block", PYTHON, ids=[f"{i}-{b.section}" for i, b in enumerate(PYTHON)])
def test_the_pages_python_blocks_run(block, doc_dir, monkeypatch, capsys):
    lacking = missing(block.requires)
    if lacking:
        pytest.skip(f"needs {', '.join(lacking)}")
    monkeypatch.syspath_prepend(str(doc_dir))  # as `python` run in that folder would have it
    exec(compile(block.code, f"own-model.md ({block.section})", "exec"), {"__name__": "__doc_block__"})


def test_the_pages_commands_run_and_print_what_it_shows(doc_dir, capsys):
    blocks = doc_blocks()
    commands = next(b for b in blocks if b.lang == "sh" and "--model my_models:build" in b.code)
    shown = blocks[blocks.index(commands) + 1]
    for line in commands.code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        assert argv[0] == "jaxcam"
        rc, out, err = run(argv[1:], capsys)
        assert rc == 0, (line, err)
        if argv[1] == "layers":
            assert out == shown.code, out
    assert str(doc_dir) not in sys.path  # the CLI found ./my_models.py itself
    rc, _, err = run(["layers", "--model", "my_models:buld"], capsys)
    quoted = re.search(r"`(jaxcam: error: --model\s+'my_models:buld'.*?) \.\.\.`", open(DOC).read(), re.S).group(1)
    assert rc == 2 and " ".join(quoted.split()) in one_error_line(err)


def test_a_segmentation_target_gives_grad_cam_of_the_region_score(doc_dir, monkeypatch):
    """The page's segmentation example, checked against Grad-CAM written out: weights = the spatial mean of
    d(region score)/d(activations), map = sum_k w_k A_k."""
    import jax.numpy as jnp

    from jaxcam.tapped import capture

    monkeypatch.syspath_prepend(str(doc_dir))
    block = next(b for b in PYTHON if b.section == "Detection and segmentation targets")
    ns = {"__name__": "__doc_block__"}
    exec(compile(block.code, "own-model.md", "exec"), ns)
    model, images, in_region = ns["model"], ns["images"], ns["in_region"]
    x = model.preprocess(images)
    raw = jaxcam.explain(model, x, "gradcam", targets=1, target=in_region, preprocessed=True, raw=True)[0]

    def head(acts):  # the model with block2's activations substituted
        return model.tapped.apply(model.params, x, lambda s, a: acts if s == "block2" else a)

    acts = capture(model.tapped.apply, model.params, x, ["block2"]).acts["block2"]
    grads = jax.grad(lambda a: sum(in_region(out, 1) for out in head(a)))(acts)
    want = jnp.einsum("nhwk,nk->nhw", acts, grads.mean(axis=(1, 2)))
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(want).max()) > 0
