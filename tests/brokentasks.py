"""
A task module that cannot be imported.
"""

raise ImportError("this task module is broken on purpose")
