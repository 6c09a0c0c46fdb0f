"""SyCAM: metric-guided synthesis of CAM expressions (Luque-Cerpa, Polgreen, Rajan & Torfah, arXiv 2504.09998).

:mod:`jaxcam.sycam.expr` is the typed expression language (terminals A, G, G2, G3, S, D; printing, parsing, JSON);
:mod:`jaxcam.sycam.search` the bottom-up enumeration with observational-equivalence pruning, the beam and the
vmapped batch scoring; the method ``sycam`` in :data:`jaxcam.METHODS` runs a found expression.
"""

from .expr import (BINARY, KNOWN, TERMINALS, UNARY, Expr, as_expr, check_weights, const, evaluate, from_json, load,
                   parse, save, terminal, to_json, type_of)

_SEARCH = ("Grammar", "SearchResult", "synthesize", "search_terminals", "compute_terminals", "Scorer")


def __getattr__(name):  # the search imports the driver and the metrics, which import the methods, which import expr
    if name in _SEARCH:
        from . import search
        return getattr(search, name)
    raise AttributeError(f"module 'jaxcam.sycam' has no attribute {name!r}")


__all__ = ["BINARY", "KNOWN", "TERMINALS", "UNARY", "Expr", "as_expr", "check_weights", "const", "evaluate",
           "from_json", "load", "parse", "save", "terminal", "to_json", "type_of", *_SEARCH]
