"""One-way imports between the CAM driver and the metrics: the driver (jaxcam._explain) never imports
jaxcam.metrics (its shared ROAD core lives in jaxcam.imputation), so the metrics may import the driver."""

import ast
import pathlib

import jaxcam

ROOT = pathlib.Path(jaxcam.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_the_driver_and_the_core_never_import_the_metrics():
    for name in ("_explain.py", "tapped.py", "imputation.py", "methods/__init__.py", "methods/base.py",
                 "methods/gradient.py", "methods/perturbation.py", "methods/multipass.py"):
        imported = _imports(ROOT / name)
        assert not any(m.lstrip(".").startswith("metrics") or m.startswith("jaxcam.metrics") for m in imported), \
            (name, imported)


def test_the_tapped_protocol_imports_jax_only():
    assert _imports(ROOT / "tapped.py") <= {"__future__", "collections.abc", "dataclasses", "typing", "jax",
                                            "jax.numpy", ".errors"}
