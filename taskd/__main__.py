"""
C{python -m taskd}: see L{taskd.cli}; this runs L{taskd.cli.main.main}.
"""

import os
import signal
import sys


def _early(signum: int, frame: object) -> None:
    # A signal while Python is still importing: nothing was sent yet.
    sys.stderr.write(f"taskd: interrupted ({signal.Signals(signum).name}); nothing was sent\n")
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for _signum in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_signum) != signal.SIG_IGN:
        signal.signal(_signum, _early)

from taskd.cli.main import main  # noqa: E402

main()
