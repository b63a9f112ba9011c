"""`moebius-edge info`."""


def register(sub):
    p = sub.add_parser("info", help="(not implemented yet)")
    p.set_defaults(func=lambda args: 1)
