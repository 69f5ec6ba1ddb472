"""
A task module that imports in the parent but not in a worker whose
environment has C{TASKD_TEST_BREAK} set to C{always}, or to the path of a
file that exists.
"""

import os
import sys

from taskd import task


def _inWorker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "taskd.worker"


_flag = os.environ.get("TASKD_TEST_BREAK")
if _inWorker() and _flag and (_flag == "always" or os.path.exists(_flag)):
    raise ImportError("broken in the worker on purpose")


@task
def fine() -> str:
    return "fine"
