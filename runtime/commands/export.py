"""`moebius-edge export`."""


def register(sub):
    p = sub.add_parser("export", help="(not implemented yet)")
    p.set_defaults(func=lambda args: 1)
