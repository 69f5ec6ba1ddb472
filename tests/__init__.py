"""
Tests for taskd; run with C{python -m twisted.trial tests}.
"""
