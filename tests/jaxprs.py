"""Counting primitives in traced programs: how tests show what a compiled program does (one sort, N convolutions)."""


def equations(jaxpr):
    """Every equation of ``jaxpr``, those of its sub-jaxprs (scan, cond, pjit bodies) included, depth first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner)


def count(jaxpr, prim: str) -> int:
    """How many equations of primitive ``prim`` ``jaxpr`` holds, sub-jaxprs included."""
    return sum(eqn.primitive.name == prim for eqn in equations(jaxpr))
