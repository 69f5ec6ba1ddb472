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

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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


class ProtocolExamplesTests(SynchronousTestCase):
    def test_jsonExamplesAreValidMessages(self) -> None:
        """
        Every JSON example in the protocol specification is a message
        taskd decodes: requests with the daemon's decoder, replies with the
        client's.
        """
        import json

        from taskd.wire import Call, decodeReply, decodeRequest

        messages = []
        for path, block in samples("json"):
            try:
                messages.append(json.loads(block))
            except ValueError:
                messages.extend(json.loads(line) for line in block.splitlines() if line.strip())
        self.assertGreaterEqual(len(messages), 14)
        kinds = set()
        for message in messages:
            line = json.dumps(message).encode()
            kind = message.get("type", "call")
            reply = kind in ("result", "progress", "error") or (kind == "hello" and "server" in message) or (
                kind in ("stats", "tasks") and len(message) > 1
            ) or kind in ("accepted", "goodbye") or (kind == "job" and "state" in message) or (
                kind == "admin" and not set(message) <= {"type", "command", "token", "number", "count"}
            )
            if reply:
                decodeReply(line)
                kinds.add("reply:" + kind)
            else:
                request = decodeRequest(line)
                if isinstance(request, Call):
                    self.assertTrue(request.function)
                kinds.add("request:" + kind)
        self.assertEqual(
            kinds,
            {"request:call", "request:cancel", "request:hello", "request:stats", "request:tasks",
             "reply:result", "reply:progress", "reply:error", "reply:hello", "reply:stats", "reply:tasks",
             "request:submit", "request:job", "request:wait", "reply:accepted", "reply:job",
             "request:admin", "reply:admin", "reply:goodbye"},
        )


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


def sessions() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """
    The C{console} blocks: (file, [(command, expected output lines)]).
    """
    found = []
    for path, block in samples("console"):
        commands: list[tuple[str, list[str]]] = []
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):
                    i += 1
                    command = command + "\n" + lines[i]  # bash joins the lines
                commands.append((command, []))
            elif commands:
                commands[-1][1].append(line)
            i += 1
        found.append((path, commands))
    return found


def outputMatches(expected: list[str], actual: list[str]) -> bool:
    """
    Compare output with a documented transcript, in which a line that is
    only C{...} stands for any number of lines and C{...} within a line for
    any text.
    """
    if not expected:
        return not actual
    first, rest = expected[0], expected[1:]
    if first.strip() == "...":
        return any(outputMatches(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in first.split("..."))
    return re.fullmatch(pattern, actual[0]) is not None and outputMatches(rest, actual[1:])


NC_SHIM = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(os.environ["TASKD_TEST_PORT"])))
s.sendall(sys.stdin.buffer.read())
s.shutdown(socket.SHUT_WR)
while True:
    data = s.recv(65536)
    if not data:
        break
    sys.stdout.buffer.write(data)
"""


class ConsoleSessionTests(TwistdMixin, TestCase):
    timeout = 120

    @inlineCallbacks
    def test_sessions(self) -> Any:
        """
        Every console session in the docs, run command by command in one
        shell against a real daemon (C{nc} played by a small Python stand-
        in, port 12345 by the daemon's own), prints what the docs show.
        """
        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        work = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(work, "myapp"))
        open(os.path.join(work, "myapp", "__init__.py"), "w").close()
        with open(os.path.join(work, "myapp", "tasks.py"), "w") as f:
            f.write(tutorial(0))  # the tutorial's sessions call its task
        daemon = self.spawn(
            "--workers", "2", "--listen", "tcp:0:interface=127.0.0.1",
            "--tasks", "taskd.examples", "--tasks", "myapp.tasks",
            PYTHONPATH=os.pathsep.join([work, ROOT] + sys.path),
        )
        m = yield daemon.waitFor(rb"starting on (\d+)")
        yield daemon.waitFor(rb"pool ready")
        port = m.group(1).decode()
        shim = os.path.join(work, "nc.py")
        with open(shim, "w") as f:
            f.write(NC_SHIM)
        env = dict(
            os.environ,
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            PYTHONPATH=os.pathsep.join([ROOT] + sys.path),
            TASKD_CONNECT=f"tcp:127.0.0.1:{port}",
            TASKD_TEST_PORT=port,
        )
        checked = 0
        for path, commands in sessions():
            if path == TUTORIAL:
                continue  # WholeTutorialTests runs it, in one shell
            script = [f'nc() {{ "{sys.executable}" "{shim}"; }}']
            for number, (command, _) in enumerate(commands):
                # Mark where each command's output starts, keeping $? intact.
                script.append(f"__status=$?; echo '@@ {number} @@'; (exit $__status)")
                script.append("{ " + command + "\n} 2>&1")
            out, err, status = yield getProcessOutputAndValue(
                "/bin/bash", ["-c", "\n".join(script)], env=env, path=work, reactor=reactor
            )
            parts = re.split(r"^@@ \d+ @@\n", out.decode(), flags=re.MULTILINE)[1:]
            self.assertEqual(len(parts), len(commands), f"{path}: {err.decode()}")
            for (command, expected), actual in zip(commands, parts):
                self.assertTrue(
                    outputMatches(expected, actual.splitlines()),
                    f"{path}: $ {command}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + actual,
                )
                checked += 1
        self.assertGreaterEqual(checked, 8)


TUTORIAL = os.path.join("docs", "tutorial.md")


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for programs
    whose port is given on their command line, as the tutorial's are).
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tutorialSteps() -> list[tuple[str, str, list[str]]]:
    """
    The tutorial, in order: (kind, text, expected output) for each
    command of its C{sh} and C{console} blocks (kind C{"command"}) and
    each file its C{python} blocks give (kind C{"file"}, text the path
    named on the block's first line, then the code).
    """
    with open(os.path.join(ROOT, TUTORIAL), encoding="utf-8") as f:
        text = f.read()
    steps: list[tuple[str, str, list[str]]] = []
    for language, code in FENCE.findall(text):
        if language == "python":
            first, _, rest = code.partition("\n")
            assert first.startswith("# "), f"a tutorial Python block names its file: {first}"
            steps.append(("file", first[2:].strip(), [code]))
        elif language == "sh":
            steps.extend(("command", line, []) for line in code.splitlines() if line.strip())
        elif language == "console":
            for line in code.splitlines():
                if line.startswith("$ "):
                    steps.append(("command", line[2:], []))
                else:
                    steps[-1][2].append(line)
    return steps


class WholeTutorialTests(TestCase):
    """
    docs/tutorial.md, run top to bottom in one shell with background jobs,
    as a reader runs it in one terminal.
    """

    timeout = 180

    @inlineCallbacks
    def test_tutorial(self) -> Any:
        """
        Every command of the tutorial runs, in order, in one bash process,
        and prints what the tutorial shows.  The test stands in for the
        reader in three ways only: its own virtual environment replaces
        step 1's install (see below); the tutorial's ports (12345, 2525, 8080) are
        replaced by free ones (a C{--listen} is added to each C{twistd}
        command and C{TASKD_CONNECT} set); and the one foreground server,
        which the reader stops with Ctrl-C after using its page, is run in
        the background, its page fetched, then sent SIGINT.  (The
        checkout's taskd stands for the installed one: it is put on every
        command's path.)  At the end no job of the shell is left running.
        """
        from twisted.internet import reactor

        steps = tutorialSteps()
        assert steps[0][0] == "command" and "pip install" in steps[0][1], steps[0]
        steps = steps[1:]
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        # The repository root, as the tutorial's commands see it.
        for name in ("taskd", "docs"):
            os.symlink(os.path.join(ROOT, name), os.path.join(work, name))
        ports = {"12345": str(freePort()), "2525": str(freePort()), "8080": str(freePort())}

        def ported(text: str) -> str:
            for old, new in ports.items():
                text = text.replace(old, new)
            return text

        shim = os.path.join(work, "nc.py")
        with open(shim, "w") as f:
            f.write(NC_SHIM)
        script = [
            "set -m",  # job control, as in a terminal
            # Whatever happens, the shell's jobs end with it.
            "trap 'kill $(jobs -p) 2>/dev/null' EXIT",
            "trap 'exit 143' TERM",
            f'nc() {{ TASKD_TEST_PORT=$4 "{sys.executable}" "{shim}"; }}',
        ]
        expectations = []
        for number, (kind, text, expected) in enumerate(steps):
            if kind == "file":
                script.append(f"cat > {text} <<'TUTORIAL_EOF'\n{ported(expected[0])}TUTORIAL_EOF")
                continue
            # The checkout stands for the installed taskd (step 1).
            command = re.sub(r"^PYTHONPATH=(\S+)", r"PYTHONPATH=\1:$PYTHONPATH", ported(text))
            if command.lstrip().startswith("PYTHONPATH") and " twistd " in command and "--listen" not in command:
                command = command.replace(" taskd ", f" taskd --listen tcp:{ports['12345']}:interface=127.0.0.1 ", 1)
            if "wsmailer.py" in command:
                # The reader's foreground server: started, its page
                # fetched, then Ctrl-C.
                fetch = (
                    f'"{sys.executable}" -c "import urllib.request; '
                    f"page = urllib.request.urlopen('http://127.0.0.1:{ports['8080']}/').read(); "
                    "assert b'Mail the users' in page, page\""
                )
                # (disowned: the test's job is no job of the tutorial's)
                command = (
                    f"{command} > wsmailer.out 2>&1 & ws=$!; disown $ws\n"
                    "for i in $(seq 100); do grep -q 'Ctrl-C stops it' wsmailer.out && break; sleep 0.1; done\n"
                    f"{fetch}; kill -INT $ws\n"
                    "for i in $(seq 100); do kill -0 $ws 2>/dev/null || break; sleep 0.1; done\n"
                    "cat wsmailer.out"
                )
            script.append(f"__status=$?; echo '@@ {number} @@'; (exit $__status)")
            script.append("{ " + command + "\n} 2>&1")
            expectations.append((number, text, [ported(line) for line in expected]))
        script.append("echo '@@ end @@'; jobs -p")
        env = dict(
            os.environ,
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            TASKD_CONNECT=f"tcp:127.0.0.1:{ports['12345']}",
        )
        env["PYTHONPATH"] = work
        shell = _Shell()
        process = reactor.spawnProcess(shell, "/bin/bash", ["/bin/bash", "-c", "\n".join(script)], env=env, path=work)

        def stop() -> Any:
            if shell.ended.called:
                return None
            process.signalProcess("TERM")
            return shell.ended

        self.addCleanup(stop)
        out, err, status = yield shell.ended
        text = out.decode()
        parts = dict(re.findall(r"^@@ (\d+) @@\n(.*?)(?=^@@ )", text, flags=re.MULTILINE | re.DOTALL))
        for number, command, expected in expectations:
            actual = parts.get(str(number))
            self.assertIsNotNone(actual, f"$ {command} did not run:\n{text}\n{err.decode()}")
            self.assertTrue(
                outputMatches(expected, actual.splitlines()),
                f"$ {command}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + actual,
            )
        self.assertEqual(text.split("@@ end @@\n")[-1], "", "jobs left running")
        self.assertEqual(status, 0, err.decode())


class PlainTrialTests(TestCase):
    """
    The README's development set-up lets plain C{trial} find the tests
    from the repository root, as editors run it from each module's
    C{test-case-name} header.
    """

    timeout = 120

    @inlineCallbacks
    def test_plainTrial(self) -> Any:
        """
        The C{trial} command puts its own directory, not the current one,
        first on C{sys.path} (unlike C{python -m twisted.trial}), so in a
        virtual environment with taskd installed as a plain package,
        C{trial tests} fails with C{No module named 'tests'}.
        After the README's editable install (C{editable_mode=compat}, which
        puts the checkout on the environment's path), C{trial
        tests.test_errors} runs, C{trial --dry-run tests} finds the whole
        suite, and C{python -m twisted.trial} still works.

        A throwaway environment stands for the README's: it sees this
        environment's packages (Twisted, setuptools) through a C{.pth}
        file, gets the README's install of the checkout (pip fetches only
        the build backend, as for any install from source), and a C{trial}
        script made as pip makes console scripts.
        """
        import re as _re
        import site

        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
        self.assertIn("pip install -e '.[test]' --config-settings editable_mode=compat", readme)
        self.assertIn("trial tests", readme)

        venv = os.path.abspath(self.mktemp())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

        def run(executable: str, *args: str) -> Any:
            return getProcessOutputAndValue(executable, args, env=env, path=ROOT, reactor=reactor)

        out, err, status = yield run(sys.executable, "-m", "venv", "--without-pip", venv)
        self.assertEqual(status, 0, err)
        python = os.path.join(venv, "bin", "python")
        (purelib,) = [line for line in (yield run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))[0].decode().splitlines() if line]
        with open(os.path.join(purelib, "outer.pth"), "w") as f:
            f.write("\n".join(site.getsitepackages()) + "\n")
        trial = os.path.join(venv, "bin", "trial")
        with open(os.path.join(os.path.dirname(sys.executable), "trial")) as f:
            script = f.read().split("\n", 1)[1]
        with open(trial, "w") as f:
            f.write(f"#!{python}\n{script}")
        os.chmod(trial, 0o755)

        out, err, status = yield run(trial, "tests")
        self.assertNotEqual(status, 0)
        self.assertIn(b"No module named 'tests'", out)
        out, err, status = yield run(trial, "tests.test_errors")
        self.assertNotEqual(status, 0)

        out, err, status = yield run(
            sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
            "-e", ".", "--config-settings", "editable_mode=compat",
        )
        self.assertEqual(status, 0, err)
        out, err, status = yield run(trial, "tests.test_errors")
        self.assertEqual(status, 0, out + err)
        self.assertRegex(out.decode(), r"PASSED \(successes=\d+\)")
        out, err, status = yield run(trial, "--dry-run", "tests")
        self.assertEqual(status, 0, out + err)
        count = int(_re.search(r"Ran (\d+) tests", out.decode()).group(1))  # type: ignore[union-attr]
        self.assertGreater(count, 150)
        out, err, status = yield run(python, "-m", "twisted.trial", "tests.test_errors")
        self.assertEqual(status, 0, out + err)


class _Shell(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[bytes, bytes, Any]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((self.out, self.err, reason.value.exitCode))


def _block(path: str, language: str) -> str:
    (code,) = [code for p, code in samples(language) if p == path]
    return code


class DeploymentConfigTests(SynchronousTestCase):
    """
    The configuration samples of docs/deployment.md are checked by the
    tools that will read them (Debian's haproxy and systemd; .ci/run
    installs haproxy where missing).
    """

    def test_haproxy(self) -> None:
        """
        The HAProxy configuration is valid, without warnings.
        """
        import shutil
        import subprocess

        haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian package 'haproxy')")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_block(os.path.join("docs", "deployment.md"), ""))
        result = subprocess.run([haproxy, "-c", "-f", path], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertNotIn("WARNING", result.stdout + result.stderr)

    def test_systemdUnit(self) -> None:
        """
        The systemd unit passes C{systemd-analyze verify} (with ExecStart
        pointing at this environment's twistd).
        """
        import shutil
        import subprocess

        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        unit = _block(os.path.join("docs", "deployment.md"), "ini").replace("/opt/taskd/bin/twistd", twistd)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "taskd.service")
        with open(path, "w") as f:
            f.write(unit)
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
