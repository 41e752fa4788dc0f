"""A trainer stand-in that starts a generator process, then ends the way the test asks.

Prints ``WORKER <pid>`` once the engine has generated, then, by ``HOW``:
``close`` calls ``close()``; ``raise`` raises (uncaught); ``busy-raise`` raises while the worker is mid-generation;
``wait`` sleeps until signalled (the test sends SIGINT, SIGTERM or SIGKILL); ``interrupt-then-generate`` catches
Ctrl-C and generates once more, as a trainer finishing its step before saving does. Run by
``tests/rollout/test_process_engine_shutdown.py``.

Usage: python process_engine_owner.py MODEL_DIR HOW
"""

from __future__ import annotations

import signal
import sys
import time

from openrs_pl.rollout.process_engine import ProcessEngine, ProcessEngineConfig
from openrs_pl.rollout.types import SamplingConfig

if __name__ == "__main__":  # spawn re-imports this file in the worker: only the trainer runs the body
    # Start with Ctrl-C raising KeyboardInterrupt, as in a terminal: an ignored SIGINT is inherited, and the test
    # runner's process ignores it for good once any in-process fit was interrupted (Lightning's _call_and_handle_
    # interrupt sets SIG_IGN), which made the SIGINT cases hang in the full suite.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model_dir, how = sys.argv[1], sys.argv[2]
    engine = ProcessEngine(model_dir, eos_token_id=1, pad_token_id=2, config=ProcessEngineConfig(join_timeout_s=2))
    engine.generate([[5, 6, 7]], SamplingConfig(n=2, max_tokens=4, seed=0))
    ready = f"WORKER {engine.pid}"
    if how != "wait" and how != "interrupt-then-generate":
        print(ready, flush=True)
    if how == "close":
        engine.close()
        print("CLOSED", flush=True)
    elif how == "raise":
        raise RuntimeError("the trainer failed")
    elif how == "busy-raise":
        engine.submit([[5, 6, 7]] * 8, SamplingConfig(n=8, max_tokens=3000, seed=0))  # minutes of decoding
        time.sleep(1.0)
        raise RuntimeError("the trainer failed while the generator was busy")
    else:
        try:
            # Announced inside the try: a signal sent as soon as the test reads the line lands in the handler.
            print(ready, flush=True)
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            if how != "interrupt-then-generate":
                raise
            engine.generate([[5, 6, 7]], SamplingConfig(n=2, max_tokens=4, seed=0))
            print("GENERATED AFTER CTRL-C", flush=True)
