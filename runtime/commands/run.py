"""`moebius-edge run`."""


def register(sub):
    p = sub.add_parser("run", help="(not implemented yet)")
    p.set_defaults(func=lambda args: 1)
