"""
The callers of docs/callers.md: the PHP, Node.js and shell samples of
docs/examples/ run with the real C{php}, C{node} and C{nc} against a real
C{twistd taskd}, their output checked against the transcripts the page
shows, and the page checked to show exactly those files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import test_reliability
from tests.test_docs import outputMatches, samples, sessions
from tests.test_tap import ROOT

PAGE = os.path.join("docs", "callers.md")
EXAMPLES = os.path.join(ROOT, "docs", "examples")

PHP = shutil.which("php")
NODE = shutil.which("node") or shutil.which("nodejs")
NC = shutil.which("nc")
NO_PHP = "php is not on PATH (Debian package 'php-cli'; .ci/run installs it)"
NO_NODE = "node is not on PATH (Debian package 'nodejs'; .ci/run installs it)"


def _ncProblem() -> str | None:
    """
    @return: why the shell sessions cannot run with the real C{nc}, or
        L{None} if they can.
    """
    if NC is None:
        return "nc is not on PATH (Debian package 'netcat-openbsd'; .ci/run installs it)"
    usage = subprocess.run([NC, "-h"], capture_output=True, text=True).stderr
    if not re.search(r"^\s*-q\b", usage, re.M) or not re.search(r"^\s*-N\b", usage, re.M):
        return f"{NC} has no -q or no -N option (the sessions need netcat-openbsd's)"
    return None


NO_NC = _ncProblem()


def pageText() -> str:
    with open(os.path.join(ROOT, PAGE), encoding="utf-8") as f:
        return f.read()


def exampleFiles() -> dict[str, str]:
    """
    @return: the PHP and JavaScript example files by their path under
        docs/examples/, with their text.
    """
    found = {}
    for language in ("php", "node"):
        for name in sorted(os.listdir(os.path.join(EXAMPLES, language))):
            with open(os.path.join(EXAMPLES, language, name), encoding="utf-8") as f:
                found[f"{language}/{name}"] = f.read()
    return found


def transcripts() -> dict[str, list[str]]:
    """
    The page's plain blocks of commands run in an examples directory
    (C{$ php ...}, C{$ node ...}): each command with the lines it prints.
    """
    found: dict[str, list[str]] = {}
    for path, block in samples(""):
        if path != PAGE:
            continue
        command = None
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:]
                found[command] = []
            elif command is not None:
                found[command].append(line)
    return found


def phpDecoder(text: str) -> str:
    """
    @return: the C{taskd_result} function of a PHP file.
    """
    m = re.search(r"^function taskd_result\(.*?^\}\n", text, re.M | re.S)
    assert m is not None, "no taskd_result() here"
    return m.group(0)


class Run(ProcessProtocol):
    """
    A sample's process: collects stdout and stderr, and fires C{ended} with
    C{(out, err, exit status)}.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[str, str, int]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((self.out.decode(), self.err.decode(), reason.value.exitCode))


class PageTests(SynchronousTestCase):
    """
    docs/callers.md shows the tested files, and is linked from the docs.
    """

    def test_blocksAreExampleFiles(self) -> None:
        """
        Every PHP and JavaScript block on the page is an example file, or a
        part of one, character for character; every example file is on
        the page whole.
        """
        files = exampleFiles()
        self.assertEqual(
            sorted(files),
            ["node/call.js", "node/demo.js", "node/taskd.js",
             "php/TaskdClient.php", "php/call.php", "php/demo.php", "php/pipeline.php", "php/workerman.php"],
        )
        blocks = [(language, code) for language in ("php", "js") for path, code in samples(language) if path == PAGE]
        self.assertGreaterEqual(len(blocks), len(files) + 2)
        for language, code in blocks:
            self.assertTrue(any(code in text for text in files.values()), f"a {language} block of {PAGE} is in no example file:\n{code}")
        shown = {code for language, code in blocks}
        for name, text in files.items():
            self.assertIn(text, shown, f"docs/examples/{name} is not shown whole on {PAGE}")

    def test_oneDecoder(self) -> None:
        """
        The Workerman program, which CI cannot run, decodes replies with
        the same function as the tested plain-PHP samples, and builds its
        request in the same shape (an associative C{args}: keyword
        arguments).
        """
        files = exampleFiles()
        decoder = phpDecoder(files["php/call.php"])
        self.assertEqual(phpDecoder(files["php/pipeline.php"]), decoder)
        self.assertEqual(phpDecoder(files["php/workerman.php"]), decoder)
        self.assertIn("taskd_result(json_decode($line, true, 512, JSON_THROW_ON_ERROR))", files["php/workerman.php"])
        self.assertIn("'args' => ['to' => $message, 'subject' => 'hello']", files["php/workerman.php"])
        self.assertIn("taskd_call($socket, 'add', ['a' => 'tic', 'b' => 'tac'])", files["php/call.php"])
        # The mail task it calls exists and takes those keywords.
        with open(os.path.join(EXAMPLES, "mail_tasks.py"), encoding="utf-8") as f:
            self.assertIn("def pretend_mail(to: str, subject: str)", f.read())

    def test_linked(self) -> None:
        """
        The protocol specification and the README's documentation list
        link to the page.
        """
        with open(os.path.join(ROOT, "docs", "protocol.md"), encoding="utf-8") as f:
            self.assertTrue("](callers.md)" in f.read(), "docs/protocol.md does not link to callers.md")
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            self.assertTrue("- [docs/callers.md](docs/callers.md)" in f.read(), "the README does not list docs/callers.md")

    def test_phpSyntax(self) -> None:
        """
        Every PHP file parses (C{php -l}), the Workerman program included.
        """
        if PHP is None:
            raise SkipTest(NO_PHP)
        for name in exampleFiles():
            if name.endswith(".php"):
                result = subprocess.run([PHP, "-l", os.path.join(EXAMPLES, name)], capture_output=True, text=True)
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_nodeSyntax(self) -> None:
        """
        Every JavaScript file parses (C{node --check}).
        """
        if NODE is None:
            raise SkipTest(NO_NODE)
        for name in exampleFiles():
            if name.endswith(".js"):
                result = subprocess.run([NODE, "--check", os.path.join(EXAMPLES, name)], capture_output=True, text=True)
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class CallersTestCase(test_reliability.DaemonTestCase):
    """
    Runs the samples against a real daemon.
    """

    timeout = 120

    def runSample(self, command: str, token: str | None = None) -> Deferred[tuple[str, str, int]]:
        """
        Run a command of the page's transcripts (C{php demo.php}, C{node
        call.js add '[1, 2]'}) in its examples directory, with the
        daemon's port and, if given, a token; killed at cleanup if still
        running.
        """
        argv = shlex.split(command)
        executable, directory = {"php": (PHP, "php"), "node": (NODE, "node")}[argv[0]]
        assert executable is not None
        env = dict(os.environ, TASKD_PORT=str(self.port))
        env.pop("TASKD_TOKEN", None)
        if token is not None:
            env["TASKD_TOKEN"] = token
        proto = Run()
        process = reactor.spawnProcess(proto, executable, [executable, *argv[1:]], env=env, path=os.path.join(EXAMPLES, directory))

        def cleanup() -> Any:
            if not proto.ended.called:
                process.signalProcess("KILL")
                return proto.ended
            return None

        self.addCleanup(cleanup)
        return proto.ended

    def assertTranscript(self, command: str, output: str) -> None:
        """
        C{output} is what the page shows C{command} printing; answers to
        a batch (a line C{answered in this order: ...}, or lines
        C{batch ...}) may come in any order but with the C{slow} call last,
        and the cancel's time may differ.
        """
        expected = transcripts()[command]
        actual = output.splitlines()
        self.assertEqual(len(actual), len(expected), f"$ {command}\n{output}")
        batch = [i for i, line in enumerate(expected) if line.startswith("batch ")]
        if batch:
            wantBatch, gotBatch = expected[batch[0] : batch[-1] + 1], actual[batch[0] : batch[-1] + 1]
            self.assertEqual(sorted(gotBatch), sorted(wantBatch), output)
            self.assertTrue(gotBatch[-1].startswith("batch slow: "), f"the slow call was not answered last:\n{output}")
            expected = expected[: batch[0]] + expected[batch[-1] + 1 :]
            actual = actual[: batch[0]] + actual[batch[-1] + 1 :]
        for want, got in zip(expected, actual):
            if want.startswith("answered in this order: "):
                wantOrder, gotOrder = want.split(": ")[1].split(), got.split(": ")[1].split()
                self.assertEqual(sorted(gotOrder), sorted(wantOrder), got)
                self.assertEqual(gotOrder[-1], "slow", f"the slow call was not answered last: {got}")
            elif want.startswith("sleep(60): cancelled after "):
                self.assertRegex(got, r"^sleep\(60\): cancelled after 0\.\d s: the call was cancelled$")
            else:
                self.assertEqual(got, want, f"$ {command}\n{output}")


class PHPTests(CallersTestCase):
    """
    The PHP samples, with the real C{php}.
    """

    skip = None if PHP else NO_PHP

    @inlineCallbacks
    def test_oneCallAtATime(self) -> Any:
        """
        call.php, standard library only: results, keyword arguments, a task
        that raises (C{task_failed}, C{ValueError}) and an unknown task,
        one blocking call at a time on one connection.
        """
        yield self.startDaemon()
        out, err, status = yield self.runSample("php call.php")
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("php call.php", out)

    @inlineCallbacks
    def test_pipelined(self) -> Any:
        """
        pipeline.php sends five calls with ids at once; the quick ones and
        the unknown task are answered before the slow one sent first, and
        each answer is matched to its call by id.
        """
        yield self.startDaemon()
        out, err, status = yield self.runSample("php pipeline.php")
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("php pipeline.php", out)

    @inlineCallbacks
    def test_class(self) -> Any:
        """
        TaskdClient: results, C{TaskdError} carrying the error type and the
        task's exception class, an unknown task, a timeout, a result that
        looks like an error, and a pipelined batch answered out of order.
        """
        yield self.startDaemon()
        out, err, status = yield self.runSample("php demo.php")
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("php demo.php", out)


class NodeTests(CallersTestCase):
    """
    The Node.js samples, with the real C{node}.
    """

    skip = None if NODE else NO_NODE

    @inlineCallbacks
    def test_oneCall(self) -> Any:
        """
        call.js: a result, keyword arguments; a task that raises and an
        unknown task on stderr with exit status 1.
        """
        yield self.startDaemon()
        for command, failed in [
            ("node call.js add '[1, 2]'", False),
            ("""node call.js add '{"a": "tic", "b": "tac"}'""", False),
            ("""node call.js fail '["no luck"]'""", True),
            ("node call.js send_fax '[]'", True),
        ]:
            out, err, status = yield self.runSample(command)
            self.assertEqual(status, 1 if failed else 0, err)
            self.assertEqual(out if failed else err, "")
            self.assertTranscript(command, out + err)

    @inlineCallbacks
    def test_client(self) -> Any:
        """
        The Taskd client: results, errors with their type and exception
        class, calls pipelined with ids and answered out of order,
        progress reports, and a cancel that ends the call at once with
        C{cancelled} and stops the worker running it.
        """
        daemon = yield self.startDaemon()
        started = time.monotonic()
        out, err, status = yield self.runSample("node demo.js")
        elapsed = time.monotonic() - started
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("node demo.js", out)
        # The cancelled call sleeps 60 s; cancelling stopped its worker,
        # and a third worker took its place.
        self.assertLess(elapsed, 30)
        first = [int(pid) for pid in re.findall(rb"worker (\d+) started", daemon.output)[:2]]
        yield daemon.waitFor(rb"(?:worker \d+ started[\s\S]*){3}")
        live, ever = self.workerPids(daemon)
        self.assertEqual((len(live), len(ever)), (2, 3))
        self.assertEqual(len(set(first) - live), 1)


class TokenTests(CallersTestCase):
    """
    The samples against a daemon started with C{--auth-token-file}: a hello
    with the token first, and a missing or wrong token refused.
    """

    @inlineCallbacks
    def startDaemon(self, *options: str, port: int = 0, workers: int = 2) -> Any:
        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write("s3cret\n")
        return (yield super().startDaemon("--auth-token-file", tokenFile, *options, port=port, workers=workers))

    @inlineCallbacks
    def test_php(self) -> Any:
        """
        TaskdClient says hello with the token and then works as without
        one; without the token the first call throws C{unauthenticated};
        with a wrong one the constructor does.
        """
        if PHP is None:
            raise SkipTest(NO_PHP)
        yield self.startDaemon()
        out, err, status = yield self.runSample("php demo.php", token="s3cret")
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("php demo.php", out)
        out, err, status = yield self.runSample("php demo.php")
        self.assertEqual((out, status), ("", 255))
        self.assertIn("Uncaught TaskdError: authenticate first, with a hello that carries the token", err)
        self.assertIn("TaskdClient->call()", err)
        out, err, status = yield self.runSample("php demo.php", token="nope")
        self.assertEqual((out, status), ("", 255))
        self.assertIn("Uncaught TaskdError: the token is wrong", err)
        self.assertIn("TaskdClient->__construct()", err)

    @inlineCallbacks
    def test_node(self) -> Any:
        """
        Taskd.connect() says hello with the token and the client then works
        as without one; without the token, or with a wrong one, the demo
        stops with the daemon's C{unauthenticated} error.
        """
        if NODE is None:
            raise SkipTest(NO_NODE)
        yield self.startDaemon()
        out, err, status = yield self.runSample("node demo.js", token="s3cret")
        self.assertEqual((err, status), ("", 0))
        self.assertTranscript("node demo.js", out)
        out, err, status = yield self.runSample("node demo.js")
        self.assertEqual((out, err, status), ("", "taskd: unauthenticated: authenticate first, with a hello that carries the token\n", 1))
        out, err, status = yield self.runSample("node demo.js", token="nope")
        self.assertEqual((out, err, status), ("", "taskd: unauthenticated: the token is wrong\n", 1))
        out, err, status = yield self.runSample("node call.js add '[1, 2]'")
        self.assertEqual((out, err, status), ("", "unauthenticated: authenticate first, with a hello that carries the token\n", 1))

    @inlineCallbacks
    def test_shell(self) -> Any:
        """
        The page's shell hello, given the token in C{TASKD_TOKEN}, opens the
        connection for the call after it.
        """
        if NO_NC is not None:
            raise SkipTest(NO_NC)
        yield self.startDaemon()
        (command,) = [c for path, commands in sessions() if path == PAGE for c, _ in commands if '"token"' in c]
        out = yield self.shell(command, TASKD_TOKEN="s3cret")
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertRegex(lines[0], r'^\{"type":"hello","version":1,"server":"taskd",.*\}$')
        self.assertEqual(lines[1], '{"type":"result","result":3}')
        out = yield self.shell(command, TASKD_TOKEN="nope")
        self.assertEqual(out, '{"type":"error","error":{"type":"unauthenticated","message":"the token is wrong","started":false}}\n')

    @inlineCallbacks
    def shell(self, command: str, **env: str) -> Any:
        out, err, status = yield runShell(command.replace("12345", str(self.port)), **env)
        self.assertEqual((err, status), ("", 0))
        return out


def runShell(command: str, **env: str) -> Deferred[tuple[str, str, int]]:
    """
    Run C{command} with bash, in the environment of this process plus
    C{env} (the inherited C{TASKD_TOKEN} left out).
    """
    environ = dict(os.environ, **env)
    if "TASKD_TOKEN" not in env:
        environ.pop("TASKD_TOKEN", None)
    proto = Run()
    reactor.spawnProcess(proto, "/bin/bash", ["/bin/bash", "-c", command], env=environ, path=ROOT)
    return proto.ended


class ShellTests(CallersTestCase):
    """
    The page's shell sessions with the real C{nc}, and the Python
    one-liner for systems without it.
    """

    @inlineCallbacks
    def test_nc(self) -> Any:
        """
        Every console session on the page, run with the real C{nc} against
        the daemon's port, prints what the page shows.
        """
        if NO_NC is not None:
            raise SkipTest(NO_NC)
        yield self.startDaemon()
        checked = 0
        for path, commands in sessions():
            if path != PAGE:
                continue
            for command, expected in commands:
                out, err, status = yield runShell(command.replace("12345", str(self.port)))
                self.assertEqual((err, status), ("", 0), command)
                self.assertTrue(
                    outputMatches(expected, out.splitlines()),
                    f"$ {command}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + out,
                )
                checked += 1
        self.assertEqual(checked, 4)

    @inlineCallbacks
    def test_pythonOneLiner(self) -> Any:
        """
        The page's Python one-liner prints the reply it says it prints.
        """
        yield self.startDaemon()
        (command,) = [code for path, code in samples("sh") if path == PAGE and "python3" in code]
        out, err, status = yield runShell(
            command.replace("12345", str(self.port)),
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        )
        self.assertEqual((err, status), ("", 0))
        self.assertEqual(out, '{"type":"result","result":3}\n')
        self.assertIn("prints `" + out.strip() + "`", pageText())
