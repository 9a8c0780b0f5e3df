"""`python -m vllm_machete_plugin.bench <suite> [options]`; suites: kernels."""
from __future__ import annotations

import sys

SUITES = ("kernels",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m vllm_machete_plugin.bench {{{','.join(SUITES)}}} [--help]", file=sys.stderr)
        return 2
    from .kernels import main as kernels_main
    return kernels_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
