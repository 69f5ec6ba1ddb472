# -*- test-case-name: tests.test_cli -*-
"""
C{python -m taskd}: call a daemon, and ask it things, from a shell::

    python -m taskd call add '[1, 2]'
    python -m taskd map send_mail users.jsonl > results.jsonl
    python -m taskd hello          # what the daemon is: version, limits
    python -m taskd stats          # its counters (workers, queue ...)
    python -m taskd tasks          # the tasks it serves, with signatures
    python -m taskd --version

C{hello}, C{stats} and C{tasks} print for people, or the daemon's JSON
with C{--json}.

Exit status: 0 when every call succeeded, 1 when a call failed, 2 for bad
usage (one line on stderr naming the option or input line), 3 when the
daemon cannot be reached or refuses the token.  Ctrl-C (SIGINT) or SIGTERM
during C{call} or C{map} cancels the calls in flight on the daemon, stops
sending, prints a one-line summary and ends the process by the same signal
(a shell reports 130 or 143); a second one exits at once.

The command is a package of its own rooms, one concern each, because
none of them is of use to the daemon or to a program that embeds the
client: keeping them together under C{taskd.cli} keeps them out of the
daemon's rooms and out of its imports.  From the bottom up (each imports
only the ones before it):

  - L{taskd.cli.console}: exit statuses, the two problems that end the
    command with a one-line message, writes that cannot fail;
  - L{taskd.cli.progress}: C{map}'s progress on stderr;
  - L{taskd.cli.interruption}: what SIGINT and SIGTERM do while a command
    runs, and ending the process by a signal;
  - L{taskd.cli.options}: the commands and options, checked, with
    one-line usage errors;
  - L{taskd.cli.connecting}: connecting with a token, describing why it
    failed, closing after an interruption;
  - L{taskd.cli.calling}: the C{call} and C{map} commands;
  - L{taskd.cli.inspecting}: the C{hello}, C{stats} and C{tasks} commands;
  - L{taskd.cli.main}: L{main()<taskd.cli.main.main>}, which runs one
    command in the reactor and exits (C{taskd/__main__.py} calls it).

This C{__init__} imports none of them, so C{import taskd.cli} costs
nothing; C{__all__} names the rooms.
"""

__all__ = [
    "calling",
    "connecting",
    "console",
    "inspecting",
    "interruption",
    "main",
    "options",
    "progress",
]
