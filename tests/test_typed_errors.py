"""Sibling search for bare built-in errors: everything jaxcam raises on bad input is a JaxcamError subclass.

A static check over the package's source: a ``raise ValueError(...)`` (or TypeError, KeyError, ...) added anywhere
fails here, so the flaw issue 13 fixed one call at a time cannot come back in a new module. The few built-in raises
that are Python protocols (``len()`` of a stream, a mapping's missing key) or caught on the next line are listed
with their reason.
"""

import pathlib
import re

import jaxcam

ROOT = pathlib.Path(jaxcam.__file__).parent
BUILTIN = re.compile(r"\braise (ValueError|TypeError|KeyError|IndexError|RuntimeError|FileNotFoundError|OSError|"
                     r"LookupError|AssertionError|Exception)\b")  # NotImplementedError: abstract methods
ALLOWED = {
    # __len__ of a source whose length is unknown: len() must raise TypeError (the Python protocol)
    ("datasets.py", "raise TypeError(f\"{self.name}: the number of items is not known in advance\")"),
    # Table["missing"]: a mapping's missing key is a KeyError (the message lists the columns)
    ("table.py", "raise KeyError(f\"no column {name!r}; columns: {self.columns}\") from None"),
    # read_manifest: raised and caught on the next lines, re-raised as CorruptManifestError naming the file
    ("models/store.py", "raise ValueError(\"not a regular file\")"),
    ("models/store.py", "raise ValueError(\"no 'models' table\")"),
}


def test_every_raise_in_the_package_is_a_jaxcam_error():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if BUILTIN.search(line):
                found.append((path.relative_to(ROOT).as_posix(), line.strip()))
    bare = [f for f in found if f not in ALLOWED]
    assert not bare, "raise a jaxcam.errors class (InvalidArgumentError, UnknownNameError, ...) instead: " + repr(bare)
    assert set(found) == ALLOWED, f"allowed raises that no longer exist: {ALLOWED - set(found)}"
