"""The persistent compilation cache: where it goes, how it is switched off, and that a second process reads it."""

import os
import subprocess
import sys

from jaxcam import compilation_cache as cc


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cc.default_cache_dir() == os.path.join(str(tmp_path), "jaxcam", "xla")
    monkeypatch.setenv(cc.ENV, str(tmp_path / "mine"))
    assert cc.default_cache_dir() == str(tmp_path / "mine")
    for off in ("off", "0", "", "false"):
        monkeypatch.setenv(cc.ENV, off)
        assert cc.default_cache_dir() is None and cc.enable_compilation_cache() is None


def test_unwritable_cache_dir_is_skipped(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cc.enable_compilation_cache(str(blocker / "sub")) is None


SCRIPT = """
import logging, sys, jax, jax.numpy as jnp
logging.basicConfig(level=logging.WARNING)
logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
from jaxcam.compilation_cache import enable_compilation_cache
enable_compilation_cache(sys.argv[1])
print(float(jax.jit(lambda v: jnp.tanh(v) * 3.0 + v.sum())(jnp.arange(5.0))[2]))
"""


def test_second_process_reads_the_cache(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    runs = [subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "xla")], capture_output=True, text=True,
                           env=env, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    assert os.listdir(tmp_path / "xla")  # the first process wrote its program ...
    assert "Persistent compilation cache hit" not in runs[0].stderr
    assert "Persistent compilation cache hit" in runs[1].stderr  # ... and the second read it back
