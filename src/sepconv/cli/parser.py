"""The argument parser of the ``sepconv`` command."""

import argparse

from .commands import cmd_bench, cmd_demo, cmd_doctor, cmd_explain, cmd_profile
from .common import _Parser
from .conversion import add_convert_parser, add_optimize_parser


def _versions() -> str:
    from ..doctor import versions

    return versions()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sepconv", description="Separable convolutions for PyTorch.")
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole story on real data (digits), in about two minutes")
    p.add_argument("--quick", action="store_true", help="a shorter run: the same network, trained and calibrated on less (about 1 minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="sepconv-demo", help="directory for report.md and plots")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("explain", help="count a layer's multiplications step by step, the way the tutorials do")
    p.add_argument("--input", required=True, help="HxWxC, e.g. 15x15x3")
    p.add_argument("--kernel", default="3", help="K or KHxKW")
    p.add_argument("--filters", type=int, required=True, help="number of kernels N")
    p.add_argument("--padding", default="valid", help="valid, same or an int")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--depth-multiplier", type=int, default=1)
    p.add_argument("--spatial", action="store_true", help="spatially separable (Kx1 then 1xK) instead")
    p.add_argument("--rank", type=int, default=1, help="rank of the spatially separable / blueprint forms")
    p.add_argument("--table", action="store_true", help="also print all separable forms side by side")
    p.set_defaults(func=cmd_explain)

    add_convert_parser(sub)
    add_optimize_parser(sub)

    p = sub.add_parser("bench", help="time a separable layer against its dense twin, side by side")
    p.add_argument("--input", required=True, help="BxCxHxW, e.g. 8x32x112x112")
    p.add_argument("--filters", type=int, required=True, help="output channels N")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="MACs, FLOPs, params per layer and per layer type")
    p.add_argument("model", help="mobilenet_v1[:WIDTH], FILE.py:FACTORY, or a torch.save'd model file")
    p.add_argument("--input", help="BxCxHxW, e.g. 1x3x224x224")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("doctor", help="versions, the CPU and its vector ISA, and whether the C++ kernels are active "
                                      "(builds them first if this environment has no build yet)")
    p.add_argument("--no-build", action="store_true", help="only report; never compile the kernels")
    p.set_defaults(func=cmd_doctor)
    return parser
