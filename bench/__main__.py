"""scripts/bench [quick|full] [workload...] | wan [RATE_MBIT RTT_MS] | scale [GIB [FILES]] | emulator [...] | engine [...]"""

import sys


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    if argv and argv[0] == "emulator":
        from . import emulator_bench
        return emulator_bench.main(argv[1:])
    if argv and argv[0] == "engine":
        from . import engine_bench
        return engine_bench.main(argv[1:])
    if argv and argv[0] == "scale":
        from . import scale_bench
        return scale_bench.main(argv[1:])
    if argv and argv[0] == "wan":
        from . import wan_bench
        return wan_bench.main(argv[1:])
    from . import mount_bench
    return mount_bench.main(argv)


sys.exit(main(sys.argv[1:]))
