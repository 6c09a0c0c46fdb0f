"""jaxcam.report: one self-contained HTML file (inline styles, data: images, no URL), every text escaped."""

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxcam.report import Report, ReportError, parse_markdown_table
from jaxcam.table import Table
from jaxcam.viz import png_bytes


def _png(seed=0, size=8):
    return png_bytes((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


class _Attributes(HTMLParser):
    """Every (tag, attribute, value) of a document, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, str, str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found += [(tag, k, v or "") for k, v in attrs]


def assert_self_contained(html: str) -> None:
    """Nothing to fetch: no http(s) address, every src/href/srcset/poster a data: URI, no <link>, @import or url()."""
    assert "http://" not in html and "https://" not in html
    attrs = _Attributes(html).found
    for tag, name, value in attrs:
        if name in ("src", "href", "srcset", "poster", "action", "data"):
            assert value.startswith("data:"), f"<{tag} {name}={value[:60]!r}> is not a data: URI"
    assert not any(tag in ("link", "iframe", "object", "embed") for tag, _, _ in attrs)
    assert "@import" not in html and "url(" not in html
    for uri in re.findall(r'src="data:image/png;base64,([^"]*)"', html):
        assert base64.b64decode(uri).startswith(b"\x89PNG\r\n\x1a\n")


def test_document_is_self_contained_and_holds_every_block(tmp_path):
    r = Report("Title", "sub title")
    r.section("First").text("para one\n\npara two").code("jaxcam robustness --resume")
    r.table(Table({"method": ["gradcam", "eigencam"], "rm": [0.5, float("nan")], "n": [3, 4]}), caption="cap")
    r.section("Second", level=3).image(_png(0), "picture one").image(_png(1), "picture two")
    html = r.html()
    assert_self_contained(html)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<img ") == 2 == r.n_images
    assert "<h2>First</h2>" in html and "<h3>Second</h3>" in html
    assert html.count("<p>para") == 2 and "<pre>jaxcam robustness --resume</pre>" in html
    assert '<td class="num">0.5</td>' in html and '<td class="num">nan</td>' in html
    assert "<caption>cap</caption>" in html and "<figcaption>picture two</figcaption>" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "window.onerror" in html and "dataset.images" in html and "dataset.errors" in html
    path = r.write(tmp_path / "r.html")
    assert open(path, encoding="utf-8").read().count("<img ") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left behind


def test_every_text_is_escaped():
    evil = '<script>alert("x")</script> & <img src=http://evil.example/x.png>'
    r = Report(evil, evil)
    r.section(evil).text(evil).code(evil)
    r.table(Table({evil: [evil]}), caption=evil)
    r.table(f"| a |\n|---|\n| {evil.replace('|', '')} |")
    r.image(_png(), evil)
    html = r.html()
    assert "<script>alert" not in html and "evil.example/x.png>" not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;") >= 8
    assert html.count("<script>") == 1  # only the report's own
    assert_self_contained(html.replace("http://evil.example", ""))  # the escaped text holds the only URL


def test_markdown_tables():
    header, rows = parse_markdown_table("| a | b |\n|---|:--:|\n| 1 | x |\n| 2.5 | y |")
    assert header == ["a", "b"] and rows == [["1", "x"], ["2.5", "y"]]
    html = Report("t").table("| a | b |\n|---|---|\n| 1 | x |").html()
    assert '<td class="num">1</td><td>x</td>' in html
    for bad in ("no table", "| a |\n| b |", "| a | b |\n|---|---|\n| 1 |"):
        with pytest.raises(ReportError):
            parse_markdown_table(bad)


def test_bad_content_is_refused():
    r = Report("t")
    with pytest.raises(ReportError, match="PNG"):
        r.image(b"GIF89a....", "not png")
    with pytest.raises(ReportError, match="PNG"):
        r.image("iVBORw0KGgo=", "a string")
    with pytest.raises(ReportError, match="Table or a markdown"):
        r.table([1, 2, 3])
    with pytest.raises(ReportError, match="level"):
        r.section("x", level=1)
