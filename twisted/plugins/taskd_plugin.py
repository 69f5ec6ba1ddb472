"""
The C{twistd taskd} plugin.  It only points at L{taskd.tap}.
"""

from twisted.application.service import ServiceMaker

taskd = ServiceMaker(
    "taskd",
    "taskd.tap",
    "A task daemon: run registered Python tasks in worker processes over JSON lines.",
    "taskd",
)
