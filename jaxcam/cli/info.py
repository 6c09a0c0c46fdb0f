"""``jaxcam info``: placeholder being written in this session (replaced before commit)."""


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="(being written)")
    p.set_defaults(func=lambda args: None)
