"""Counting primitives in traced programs: how tests show what a compiled program does (one sort, N convolutions)."""


def count(jaxpr, prim: str) -> int:
    """How many equations of primitive ``prim`` ``jaxpr`` holds, sub-jaxprs (scan, cond, pjit bodies) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == prim
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += count(inner, prim)
    return n
