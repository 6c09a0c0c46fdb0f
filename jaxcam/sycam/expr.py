"""SyCAM's expression language: typed trees over cached per-channel terminals that give a CAM's channel weights.

A CAM of the template ``L = ReLU(sum_k w_k A^k)`` is fixed by its channel weights ``w`` (K,). SyCAM (Luque-Cerpa,
Polgreen, Rajan & Torfah, arXiv 2504.09998) searches for the expression of ``w``. Two types:

- **spatial** ``(h, w, K)``, one map per channel: the terminals ``A`` (activations), ``G`` (gradient of the target
  score with respect to A), ``G2 = G*G`` and ``G3 = G*G*G``;
- **channel** ``(K,)``, one number per channel: the terminals ``S`` (Score-CAM's term: the target score of the input
  masked by channel k's upsampled, min-max normalised activation) and ``D`` (Ablation-CAM's term:
  ``(y - y_{A^k=0}) / y``), and the constants.

Operators (``relu``, ``abs`` and ``norm`` keep the type; the reductions turn spatial into channel):

==========  ===================  ==================================================================
``relu``    spatial or channel   ``max(x, 0)``
``abs``     spatial or channel   ``|x|``
``norm``    spatial or channel   spatial: per-channel min-max over (i, j); channel: ``x / sum_k |x_k|``
``mean``    spatial -> channel   ``mean_ij``
``sum``     spatial -> channel   ``sum_ij``
``max``     spatial -> channel   ``max_ij``
``softmax`` channel              softmax over the K channels
``+ - * /`` any two              a channel operand broadcasts over (i, j); ``/`` is safe: 0 where ``|b| <= 1e-8``
==========  ===================  ==================================================================

Known CAMs in this language (:data:`KNOWN`): Grad-CAM ``mean(G)``, XGrad-CAM ``sum(G * A) / sum(A)``, Grad-CAM++
``sum(G2 / (2 * G2 + sum(A) * G3 + 1e-06) * relu(G))`` (pytorch-grad-cam's epsilon), Score-CAM ``softmax(S)``, Ablation-CAM ``D``.

An expression prints as a formula (``str``) that :func:`parse` reads back to the same tree, and saves to JSON
(:func:`save`, :func:`load`). Expressions are immutable and hashable, so they are static method options.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from ..errors import CorruptFileError, InvalidArgumentError, UnknownNameError
from ..files import atomic_write

SPATIAL, CHANNEL = "spatial", "channel"
SPATIAL_TERMINALS = ("A", "G", "G2", "G3")
CHANNEL_TERMINALS = ("S", "D")
TERMINALS = SPATIAL_TERMINALS + CHANNEL_TERMINALS
UNARY = ("relu", "abs", "norm", "mean", "sum", "max", "softmax")
REDUCTIONS = ("mean", "sum", "max")
BINARY = ("+", "-", "*", "/")
EPS = 1e-8
FORMAT = "jaxcam.sycam/1"

KNOWN = {
    "gradcam": "mean(G)",
    "xgradcam": "sum(G * A) / sum(A)",
    "gradcam++": "sum(G2 / (2 * G2 + sum(A) * G3 + 1e-06) * relu(G))",
    "scorecam": "softmax(S)",
    "ablationcam": "D",
}


@dataclass(frozen=True)
class Expr:
    """One node: ``op`` is a terminal name, ``"const"`` (with ``value``), a unary operator (one arg) or a binary
    operator (two args)."""

    op: str
    args: tuple[Expr, ...] = ()
    value: float | None = None

    def __str__(self) -> str:
        return _format(self)

    def __repr__(self) -> str:
        return f"Expr({str(self)!r})"

    @property
    def size(self) -> int:
        """Number of nodes."""
        return 1 + sum(a.size for a in self.args)

    @property
    def kind(self) -> str:
        """``"spatial"`` or ``"channel"`` (raises :class:`InvalidArgumentError` for an ill-typed tree)."""
        return type_of(self)

    @property
    def terminals(self) -> frozenset[str]:
        """The terminal names the expression reads (what must be computed to evaluate it)."""
        if self.op in TERMINALS:
            return frozenset((self.op,))
        return frozenset().union(*(a.terminals for a in self.args)) if self.args else frozenset()

    def __add__(self, other):
        return Expr("+", (self, as_expr(other)))

    def __sub__(self, other):
        return Expr("-", (self, as_expr(other)))

    def __mul__(self, other):
        return Expr("*", (self, as_expr(other)))

    def __truediv__(self, other):
        return Expr("/", (self, as_expr(other)))


def terminal(name: str) -> Expr:
    if name not in TERMINALS:
        raise UnknownNameError(name, TERMINALS, "SyCAM terminal")
    return Expr(name)


def const(value: float) -> Expr:
    v = float(value)
    if not math.isfinite(v):
        raise InvalidArgumentError(f"SyCAM constants must be finite numbers, got {value!r}")
    return Expr("const", (), v)


def unary(op: str, arg: Expr) -> Expr:
    if op not in UNARY:
        raise UnknownNameError(op, UNARY, "SyCAM unary operator")
    return Expr(op, (arg,))


def as_expr(e) -> Expr:
    """An :class:`Expr`, a formula string (:func:`parse`), or a number (a constant)."""
    if isinstance(e, Expr):
        return e
    if isinstance(e, str):
        return parse(e)
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        return const(e)
    raise InvalidArgumentError(f"a SyCAM expression must be an Expr, a formula string or a number, got "
                               f"{type(e).__name__}")


def type_of(e: Expr) -> str:
    """The type of ``e``, checking the whole tree."""
    if e.op in SPATIAL_TERMINALS:
        return SPATIAL
    if e.op in CHANNEL_TERMINALS or e.op == "const":
        return CHANNEL
    if e.op in UNARY:
        if len(e.args) != 1:
            raise InvalidArgumentError(f"SyCAM operator {e.op!r} takes one argument, got {len(e.args)}")
        t = type_of(e.args[0])
        if e.op in REDUCTIONS:
            if t != SPATIAL:
                raise InvalidArgumentError(f"SyCAM: {e.op}() reduces a spatial (h, w, K) term over (i, j), but "
                                           f"{e.args[0]} is a channel (K,) term")
            return CHANNEL
        if e.op == "softmax" and t != CHANNEL:
            raise InvalidArgumentError(f"SyCAM: softmax() runs over channels and takes a channel term; reduce "
                                       f"{e.args[0]} first (mean, sum or max)")
        return t
    if e.op in BINARY:
        if len(e.args) != 2:
            raise InvalidArgumentError(f"SyCAM operator {e.op!r} takes two arguments, got {len(e.args)}")
        ta, tb = type_of(e.args[0]), type_of(e.args[1])
        return SPATIAL if SPATIAL in (ta, tb) else CHANNEL
    raise UnknownNameError(e.op, TERMINALS + UNARY + BINARY + ("const",), "SyCAM node")


def check_weights(e) -> Expr:
    """``e`` as an :class:`Expr` whose type is channel (K,), as channel weights must be."""
    e = as_expr(e)
    if type_of(e) != CHANNEL:
        raise InvalidArgumentError(f"a SyCAM expression gives channel weights (K,), but {e} is a spatial "
                                   "(h, w, K) term; reduce it with mean(), sum() or max()")
    return e


# ---------------------------------------------------------------------------------------------------- evaluation

def _expand(v, t: str):
    """A channel value (..., K) broadcast against spatial values (..., h, w, K)."""
    if t == CHANNEL and jnp.ndim(v) > 0:
        return v[..., None, None, :]
    return v


def safe_div(a, b):
    ok = jnp.abs(b) > EPS
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def apply_unary(op: str, v, t: str):
    """One unary operator on a value of type ``t`` (leading batch axes allowed)."""
    if op == "relu":
        return jax.nn.relu(v)
    if op == "abs":
        return jnp.abs(v)
    if op == "norm":
        if t == SPATIAL:
            lo = jnp.min(v, axis=(-3, -2), keepdims=True)
            return safe_div(v - lo, jnp.max(v, axis=(-3, -2), keepdims=True) - lo)
        v = jnp.broadcast_to(v, jnp.shape(v))
        return safe_div(v, jnp.sum(jnp.abs(v), axis=-1, keepdims=True)) if jnp.ndim(v) else v
    if op == "mean":
        return jnp.mean(v, axis=(-3, -2))
    if op == "sum":
        return jnp.sum(v, axis=(-3, -2))
    if op == "max":
        return jnp.max(v, axis=(-3, -2))
    if op == "softmax":
        return jax.nn.softmax(v, axis=-1) if jnp.ndim(v) else v
    raise UnknownNameError(op, UNARY, "SyCAM unary operator")


def apply_binary(op: str, a, ta: str, b, tb: str):
    """One binary operator; a channel operand broadcasts over the spatial axes of a spatial one."""
    if SPATIAL in (ta, tb):
        a, b = _expand(a, ta), _expand(b, tb)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return safe_div(a, b)
    raise UnknownNameError(op, BINARY, "SyCAM binary operator")


def evaluate(e: Expr, env) -> jax.Array:
    """The value of ``e`` given ``env``: a mapping (or a function of a name) from terminal names to arrays,
    spatial ``(..., h, w, K)``, channel ``(..., K)``, with the same leading axes. Constants stay scalars."""
    look = env if callable(env) else env.__getitem__
    memo: dict[Expr, object] = {}

    def go(node: Expr):
        if node in memo:
            return memo[node]
        if node.op == "const":
            out = node.value
        elif node.op in TERMINALS:
            out = look(node.op)
        elif node.op in UNARY:
            out = apply_unary(node.op, go(node.args[0]), type_of(node.args[0]))
        else:
            a, b = node.args
            out = apply_binary(node.op, go(a), type_of(a), go(b), type_of(b))
        memo[node] = out
        return out

    type_of(e)
    return go(e)


# ------------------------------------------------------------------------------------------ printing and parsing

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _format(e: Expr) -> str:
    if e.op == "const":
        return f"{e.value:g}"
    if e.op in TERMINALS:
        return e.op
    if e.op in UNARY:
        return f"{e.op}({_format(e.args[0])})"
    a, b = e.args
    p = _PREC[e.op]
    left, right = _format(a), _format(b)
    if a.op in _PREC and _PREC[a.op] < p:
        left = f"({left})"
    if b.op in _PREC and _PREC[b.op] <= p:  # the right operand of an equal precedence keeps its brackets
        right = f"({right})"
    return f"{left} {e.op} {right}"


_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z_0-9]*)|(\S))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        num, name, sym = m.groups()
        out.append(("num", num) if num else ("name", name) if name else ("sym", sym))
        pos = m.end()
    return out


def parse(text: str) -> Expr:
    """Read a formula as :class:`Expr` prints it (``+ - * /`` with the usual precedence, left to right; unary
    operators as calls; numbers as constants; terminals by name). Raises :class:`InvalidArgumentError` naming the
    position of a syntax error, :class:`UnknownNameError` for an unknown name, and a type error for ill-typed trees."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"a SyCAM formula must be a non-empty string, got {text!r}")
    toks = _tokens(text)
    i = 0

    def peek():
        return toks[i] if i < len(toks) else ("end", "")

    def take(kind=None, value=None):
        nonlocal i
        tok = peek()
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            want = value or kind
            raise InvalidArgumentError(f"SyCAM formula {text!r}: expected {want!r} at token {i + 1}, got "
                                       f"{tok[1] or 'the end'!r}")
        i += 1
        return tok

    def expr():
        node = term()
        while peek() in (("sym", "+"), ("sym", "-")):
            op = take()[1]
            node = Expr(op, (node, term()))
        return node

    def term():
        node = factor()
        while peek() in (("sym", "*"), ("sym", "/")):
            op = take()[1]
            node = Expr(op, (node, factor()))
        return node

    def factor():
        kind, val = peek()
        if kind == "num":
            take()
            return const(float(val))
        if kind == "name":
            take()
            if val in TERMINALS:
                return Expr(val)
            if val not in UNARY:
                raise UnknownNameError(val, TERMINALS + UNARY, "SyCAM name")
            take("sym", "(")
            arg = expr()
            take("sym", ")")
            return Expr(val, (arg,))
        if (kind, val) == ("sym", "("):
            take()
            node = expr()
            take("sym", ")")
            return node
        raise InvalidArgumentError(f"SyCAM formula {text!r}: unexpected {val or 'end'!r} at token {i + 1}")

    node = expr()
    if i != len(toks):
        raise InvalidArgumentError(f"SyCAM formula {text!r}: unexpected {toks[i][1]!r} at token {i + 1}")
    type_of(node)
    return node


# ------------------------------------------------------------------------------------------------ save and load

def to_json(e: Expr) -> dict:
    """A nested dict ``{"op", "args"}`` (``{"const": v}`` for constants)."""
    if e.op == "const":
        return {"const": e.value}
    if not e.args:
        return {"op": e.op}
    return {"op": e.op, "args": [to_json(a) for a in e.args]}


def from_json(d) -> Expr:
    """The inverse of :func:`to_json`, type-checked."""
    def go(node):
        if not isinstance(node, dict):
            raise InvalidArgumentError(f"a SyCAM expression node must be a JSON object, got {node!r}")
        if "const" in node:
            return const(node["const"])
        op = node.get("op")
        if op in TERMINALS and not node.get("args"):
            return Expr(op)
        args = node.get("args")
        if not isinstance(args, list):
            raise InvalidArgumentError(f"SyCAM node {op!r} needs a list of args, got {args!r}")
        if op not in UNARY + BINARY:
            raise UnknownNameError(str(op), TERMINALS + UNARY + BINARY, "SyCAM node")
        return Expr(op, tuple(go(a) for a in args))

    e = go(d)
    type_of(e)
    return e


def save(path, e, metadata: dict | None = None) -> Path:
    """Write ``e`` (with optional JSON-able ``metadata``, e.g. the metric and score) to ``path`` atomically."""
    e = check_weights(e)
    doc = {"format": FORMAT, "formula": str(e), "tree": to_json(e), "metadata": metadata or {}}
    path = Path(path)
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def load(path) -> Expr:
    """Read an expression written by :func:`save`. A missing, corrupt or foreign file is a clear error; the tree and
    the printed formula must agree."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a SyCAM expression file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a SyCAM expression file (expected format {FORMAT!r})")
    try:
        e = from_json(doc.get("tree"))
        same = "formula" not in doc or parse(doc["formula"]) == e
    except (InvalidArgumentError, UnknownNameError) as exc:
        raise CorruptFileError(f"{path}: its expression is invalid ({exc})") from exc
    if not same:
        raise CorruptFileError(f"{path}: its formula {doc['formula']!r} and its tree ({e}) disagree")
    return check_weights(e)
