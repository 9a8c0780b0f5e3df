"""`python -m vllm_machete_plugin.bench <suite> [options]`; suites: kernels, e2e, soak, load, profile, wgmma."""
from __future__ import annotations

import sys

SUITES = ("kernels", "e2e", "soak", "load", "profile", "wgmma")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m vllm_machete_plugin.bench {{{','.join(SUITES)}}} [--help]", file=sys.stderr)
        return 2
    if argv[0] == "e2e":
        from .e2e import main as suite_main
    elif argv[0] == "soak":
        from .soak import main as suite_main
    elif argv[0] == "load":
        from .load import main as suite_main
    elif argv[0] == "profile":
        from .profile import main as suite_main
    elif argv[0] == "wgmma":
        from .wgmma import main as suite_main
    else:
        from .kernels import main as suite_main
    return suite_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
