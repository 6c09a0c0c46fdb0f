"""README.md stays true: generated tables match their registries, linked pages exist, CI runs README's test command."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_which_layer_table_is_generated_from_the_models():
    from jaxcam.cli.info import layers_markdown

    assert layers_markdown() in _read("README.md"), "paste `jaxcam models --markdown` into README's Models section"


def test_linked_pages_and_files_exist():
    readme = _read("README.md")
    links = re.findall(r"\]\(((?!https?://)[^)#]+)\)", readme)
    assert {"docs/explain.md", "docs/evaluate.md", "docs/robustness.md", "docs/convert.md",
            "docs/scale-out.md"} <= set(links)
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link


def test_ci_runs_the_readme_test_command_and_the_main_job_is_explain():
    readme = _read("README.md")
    commands = re.findall(r"```bash\n(python3 -m venv[^\n]+)\n```", readme)
    assert len(commands) == 2, commands  # exactly two set-up paths
    main_job, tests = commands
    assert main_job.endswith("&& jaxcam explain")
    assert tests in _read(".ci", "run")
