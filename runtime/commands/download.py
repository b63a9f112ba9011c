"""`moebius-edge download`."""


def register(sub):
    p = sub.add_parser("download", help="(not implemented yet)")
    p.set_defaults(func=lambda args: 1)
