"""A torchrun worker for test_distributed.py's exit tests: opens `rmdiag.distributed.
process_group`, lets rank 0 work `SECONDS` longer than the others (as `rmdiag run` scores on
rank 0 alone), or makes rank 1 fail, and prints when each rank left. Usage: exit_worker.py
{slow-main|failing-rank} SECONDS."""

import json
import os
import sys
import time

from rmdiag import distributed


def main(mode: str, seconds: float) -> None:
    rank = int(os.environ["RANK"])
    with distributed.process_group():
        if mode == "slow-main" and rank == 0:
            time.sleep(seconds)
        if mode == "failing-rank" and rank == 1:
            raise RuntimeError("rank 1 fails alone")
        entered = time.time()
    sys.stdout.write(json.dumps({"rank": rank, "entered_exit": entered, "left": time.time()})
                     + "\n")  # one write per line
    sys.stdout.flush()
    if mode == "failing-rank":  # rank 0 would leave only once rank 1 came: it never does
        time.sleep(seconds)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
