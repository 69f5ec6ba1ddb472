"""
taskd's benchmark: taskd against ampoule, multiprocessing and the bare
Twisted ceiling, in one run.  Run it with C{python -m bench}.
"""
