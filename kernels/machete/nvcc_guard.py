"""nvcc launcher for the Machete extension: runs the compiler command given as its
arguments (e.g. `ccache nvcc ...` or `nvcc ...`), passes its output through, and fails
the compile when ptxas reports serialized wgmma (C7509..C7515, "wgmma.mma_async
instructions are serialized ..."). ptxas prints these as `info`, so -Werror does not
catch them, and a serialized wgmma pipeline is a performance bug in our kernels."""
import os
import re
import subprocess
import sys

PATTERN = re.compile(r"\(C75\d\d\) Potential Performance Loss: wgmma")


def main() -> int:
    proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        return proc.returncode
    hits = [line for line in proc.stdout.splitlines() if PATTERN.search(line)]
    if hits:
        sys.stdout.write("nvcc_guard: ptxas serialized a wgmma pipeline (see above); inline everything on the "
                         "wgmma path of this kernel. Failing the build.\n")
        args = sys.argv[1:]
        if "-o" in args[:-1]:  # drop the object so a rebuild does not take it as up to date
            out = args[args.index("-o") + 1]
            if os.path.exists(out):
                os.remove(out)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
