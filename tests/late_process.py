"""python late_process.py SECONDS -m genesis_jax.train [ARGS...]

genesis_jax.train, except that the run's process 1 (--process_id=1) builds its model
SECONDS later than it would: what a process that compiles while the others load from the
persistent cache does to a run of several processes, made certain. Past gloo's 30 s the
run's first collective times out unless the processes line up before it.
"""

import runpy
import sys
import time

import genesis_jax.rundir

delay = float(sys.argv[1])
if "--process_id=1" in sys.argv:
    on_time = genesis_jax.rundir.new_model

    def late(*args, **kwargs):
        time.sleep(delay)
        return on_time(*args, **kwargs)

    genesis_jax.rundir.new_model = late
assert sys.argv[2] == "-m", sys.argv
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
