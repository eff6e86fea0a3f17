"""python with_file_size_limit.py BYTES -m MODULE [ARGS...] | SCRIPT [ARGS...]

Run a program whose files cannot grow past BYTES (RLIMIT_FSIZE, with SIGXFSZ ignored so
the write fails with EFBIG instead of killing the process): what a full disk does to a
write, without filling one. Works as root and in containers, where read-only directories
and small filesystems cannot be made. Pipes are not files: stdout and stderr still flow.
"""

import resource
import runpy
import signal
import sys

limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
