"""Test seam: run the CLI with the process stopping itself (SIGSTOP) after its K-th written unit.

    python tests/stop_after.py K prepare pretrain ...

A unit is a chunk written by a single-store prepare (`preparation.workdir.write_chunk`) or a
shard finished by a store-set driver (`preparation.storesets._unit_done`). The test then kill -9s
the stopped process: a kill at a known instant, without fault-injection code in the library.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from pegasus_gsg import cli
from pegasus_gsg.data.preparation import storesets, workdir


def main() -> int:
    stop_after = int(sys.argv[1])
    done = 0

    def counting(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            result = original(*args, **kwargs)
            done += 1
            if done == stop_after:
                os.kill(os.getpid(), signal.SIGSTOP)
            return result

        return wrapper

    workdir.write_chunk = counting(workdir.write_chunk)
    storesets._unit_done = counting(storesets._unit_done)
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
