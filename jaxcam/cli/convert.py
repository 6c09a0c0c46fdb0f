"""``jaxcam convert``: placeholder being written in this session (replaced before commit)."""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="(being written)")
    p.set_defaults(func=lambda args: None)
