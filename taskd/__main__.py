"""
C{python -m taskd}: see L{taskd.cli}.
"""

from taskd.cli import main

main()
