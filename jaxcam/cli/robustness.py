"""``jaxcam robustness``: placeholder being written in this session (replaced before commit)."""


def add_parser(sub) -> None:
    p = sub.add_parser("robustness", help="(being written)")
    p.set_defaults(func=lambda args: None)
