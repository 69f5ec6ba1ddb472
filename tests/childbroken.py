"""
A task module that imports in the parent but not in a worker that has
C{TASKD_TEST_BREAK} in its environment, or while the file it names exists.
"""

import os

from taskd import task

_flag = os.environ.get("TASKD_TEST_BREAK")
if _flag and (_flag == "always" or os.path.exists(_flag)):
    raise ImportError("broken in the worker on purpose")


@task
def fine() -> str:
    return "fine"
