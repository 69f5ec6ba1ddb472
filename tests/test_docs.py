"""
The documentation's code: every Python sample in the README and docs/
must at least compile, and the tutorial and the README's tour run as
written against a real daemon.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_cli import runCLI
from tests.test_tap import ROOT, TwistdMixin

FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def samples(language: str) -> list[tuple[str, str]]:
    """
    @return: (file, code) for every fenced block of C{language}.
    """
    found = []
    paths = [os.path.join(ROOT, "README.md")] + [
        os.path.join(ROOT, "docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs"))) if name.endswith(".md")
    ]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lang, code in FENCE.findall(f.read()):
                if lang == language:
                    found.append((os.path.relpath(path, ROOT), code))
    return found


def tutorial(index: int) -> str:
    return [code for path, code in samples("python") if path == os.path.join("docs", "tutorial.md")][index]


class CompileTests(SynchronousTestCase):
    def test_pythonSamplesCompile(self) -> None:
        """
        Every Python sample in the docs is valid Python (top-level
        C{await} allowed in fragments).
        """
        blocks = samples("python")
        self.assertGreaterEqual(len(blocks), 10)
        for path, code in blocks:
            try:
                # Fragments may await at top level, as in an async def.
                compile(code, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as e:
                self.fail(f"{path}: {e}\n{code}")


class TutorialTests(TwistdMixin, TestCase):
    timeout = 120

    @inlineCallbacks
    def test_tutorial(self) -> Any:
        """
        The tutorial's task module, run by twistd, answers the shell
        command and the Twisted program exactly as the tutorial shows;
        every complete program in the docs and the README's tour run
        against the same daemon.
        """
        app = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(app, "myapp"))
        open(os.path.join(app, "myapp", "__init__.py"), "w").close()
        with open(os.path.join(app, "myapp", "tasks.py"), "w") as f:
            f.write(tutorial(0))
        daemon = self.spawn(
            "--tasks", "myapp.tasks", "--tasks", "taskd.examples", "--workers", "2",
            "--listen", "tcp:0:interface=127.0.0.1", PYTHONPATH=os.pathsep.join([app, ROOT] + sys.path),
        )
        m = yield daemon.waitFor(rb"starting on (\d+)")
        yield daemon.waitFor(rb"pool ready: 2 workers running myapp.tasks")
        port = m.group(1).decode()
        out, err, status = yield runCLI("call", "-c", f"tcp:127.0.0.1:{port}", "checksum", '["hello"]')
        self.assertEqual(status, 0, err)
        self.assertRegex(out.decode(), r'^"[0-9a-f]{64}"\n$')

        program = os.path.join(app, "program.py")
        with open(program, "w") as f:
            f.write(tutorial(1).replace("tcp:127.0.0.1:12345", f"tcp:127.0.0.1:{port}"))
        out, err, status = yield runPython(program)
        self.assertEqual((out, status), (b"20 checksums, computed while the reactor stayed free\n", 0), err)

        # Every complete program in the docs runs as written.
        programs = [(path, code) for path, code in samples("python") if "task.react(" in code]
        self.assertGreaterEqual(len(programs), 3)
        for number, (path, code) in enumerate(programs):
            script = os.path.join(app, f"sample{number}.py")
            with open(script, "w") as f:
                f.write(code.replace("tcp:127.0.0.1:12345", f"tcp:127.0.0.1:{port}"))
            out, err, status = yield runPython(script, app)
            self.assertEqual(status, 0, f"{path}:\n{code}\n{err.decode()}")

        readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
        tour = re.search(r"python -c '\n(.*?)'", readme, re.DOTALL)
        assert tour is not None
        with open(os.path.join(app, "tour.py"), "w") as f:
            f.write(tour.group(1).replace("tcp:127.0.0.1:12345", f"tcp:127.0.0.1:{port}"))
        out, err, status = yield runPython(os.path.join(app, "tour.py"))
        self.assertEqual((out, status), (b"42\n", 0), err)


def runPython(path: str, *extraPath: str) -> Any:
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*extraPath, ROOT] + sys.path))
    return getProcessOutputAndValue(sys.executable, [path], env=env, reactor=reactor)
