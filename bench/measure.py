"""
One measurement per process: C{python -m bench.measure SPEC_JSON} prints a
JSON result.  Keeping each in its own process keeps reactors, pools and
memory from one measurement out of the next.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.rawclient import request

W2_WARMUP = 50


def _ampoule(spec: dict[str, Any], reactor: Any) -> Any:
    from ampoule import pool
    from twisted.internet import defer

    from bench import refs

    async def run() -> Any:
        p = pool.ProcessPool(refs.AmpChild, min=spec["workers"], max=spec["workers"])
        await p.start()
        try:
            return await _workload(spec, _AmpouleCaller(p, refs), reactor)
        finally:
            await p.stop()

    return defer.Deferred.fromCoroutine(run())


class _AmpouleCaller:
    def __init__(self, pool: Any, refs: Any) -> None:
        self.pool = pool
        self.refs = refs

    def call(self, function: str, args: list[Any]) -> Any:
        if function == "add":
            d = self.pool.doWork(self.refs.Add, a=args[0], b=args[1])
        elif function == "echo":
            d = self.pool.doWork(self.refs.Echo, value=args[0])
        else:
            d = self.pool.doWork(self.refs.Burn, n=args[0])
        return d.addCallback(lambda r: r["result"])


class _TaskdCaller:
    def __init__(self, client: Any) -> None:
        self.client = client

    def call(self, function: str, args: list[Any]) -> Any:
        return self.client.call(function, *args)


async def _workload(spec: dict[str, Any], caller: Any, reactor: Any) -> dict[str, Any]:
    """
    Run W1, W2, W3 or W4 through C{caller.call(function, args)}.
    """
    from twisted.internet import defer

    workload = spec["workload"]
    if workload == "w2":
        for i in range(W2_WARMUP):
            await caller.call("add", [i, 1])
        times = []
        for i in range(spec["n"]):
            t = time.perf_counter()
            result = await caller.call("add", [i, 1])
            times.append(time.perf_counter() - t)
            assert result == i + 1
        times.sort()
        return {"p50_us": 1e6 * times[len(times) // 2], "p99_us": 1e6 * times[int(len(times) * 0.99)]}
    if workload == "w1":
        calls = [("add", [i, 1], i + 1) for i in range(spec["n"])]
        inFlight = 100
    elif workload == "w3":
        calls = [("burn", [spec["burn"]], None) for _ in range(spec["n"])]
        inFlight = 100
    else:
        value = "x" * spec["size"]
        calls = [("echo", [value], value) for _ in range(spec["n"])]
        inFlight = 50
    if spec.get("window"):
        # The taskd client's own way to run many calls (docs/client.md).
        start = time.perf_counter()
        cpu = time.process_time()
        results = await caller.client.callMany(calls[0][0], [c[1] for c in calls], window=inFlight)
        for (function, args, expected), result in zip(calls, results):
            assert expected is None or result == expected, (function, args, result)
        elapsed = time.perf_counter() - start
        return {
            "seconds": elapsed,
            "calls_per_s": len(calls) / elapsed,
            "cpu_us_client": (time.process_time() - cpu) / len(calls) * 1e6,
        }
    # inFlight lanes, each making its next call when its last one is
    # answered: at most inFlight calls at once, the way a caller keeps a
    # window.  (A DeferredSemaphore holding every call's Deferred costs
    # the harness more per call the more calls wait: its release pops the
    # first of them from a list.)
    pending = iter(calls)
    start = time.perf_counter()
    cpu = time.process_time()

    async def lane() -> None:
        for function, args, expected in pending:
            result = await caller.call(function, args)
            assert expected is None or result == expected, (function, args, result)

    await defer.gatherResults([defer.Deferred.fromCoroutine(lane()) for _ in range(inFlight)])
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": elapsed, "calls_per_s": len(calls) / elapsed}
    # This process's CPU time per call (the client's, when it is taskd's).
    result["cpu_us_client"] = (time.process_time() - cpu) / len(calls) * 1e6
    if workload == "w4":
        result["mb_per_s"] = len(calls) * spec["size"] * 2 / elapsed / 1e6
    return result


def _taskdClient(spec: dict[str, Any], reactor: Any) -> Any:
    from twisted.internet import defer

    from taskd.client import connect

    async def run() -> Any:
        client = await connect(reactor, f"tcp:127.0.0.1:{spec['port']}")
        try:
            return await _workload(spec, _TaskdCaller(client), reactor)
        finally:
            await client.close()

    return defer.Deferred.fromCoroutine(run())


def _pipe(spec: dict[str, Any], reactor: Any) -> Any:
    """
    The spawnProcess ceiling: one child answering JSON lines on its
    stdin/stdout, driven like a pool with one worker.
    """
    from collections import deque

    from twisted.internet import defer, protocol

    class Child(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.buffer = b""
            self.waiting: deque[Any] = deque()

        def outReceived(self, data: bytes) -> None:
            *lines, self.buffer = (self.buffer + data).split(b"\n")
            for line in lines:
                self.waiting.popleft().callback(json.loads(line)["result"])

        def call(self, function: str, args: list[Any]) -> Any:
            d: Any = defer.Deferred()
            self.waiting.append(d)
            self.transport.write(request(function, args, 0))
            return d

    child = Child()
    process = reactor.spawnProcess(
        child, sys.executable, [sys.executable, "-m", "bench.servers", "pipechild"], env=None
    )

    async def run() -> Any:
        try:
            return await _workload(spec, child, reactor)
        finally:
            process.closeStdin()

    return defer.Deferred.fromCoroutine(run())


def _responsiveness(spec: dict[str, Any], reactor: Any) -> Any:
    """
    W5: how late does the caller's own reactor run a 10 ms LoopingCall
    while 20 ms tasks are handed to taskd (or done inline)?
    """
    from twisted.internet import defer, task

    from taskd.client import connect

    lateness: list[float] = []
    expected = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        if expected[0]:
            lateness.append(max(0.0, now - expected[0]))
        expected[0] = now + 0.01

    async def run() -> Any:
        loop = task.LoopingCall(tick)
        if spec["inline"]:
            loop.start(0.01)
            await task.deferLater(reactor, 0.1, lambda: None)
            for _ in range(spec["n"]):
                time.sleep(0.02)  # the work, done in the reactor thread
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            client = await connect(reactor, f"tcp:127.0.0.1:{spec['port']}")
            loop.start(0.01)
            await task.deferLater(reactor, 0.1, lambda: None)
            await defer.gatherResults([client.call("sleep", 0.02) for _ in range(spec["n"])])
            await client.close()
        loop.stop()
        lateness.sort()
        return {
            "p50_ms": 1e3 * lateness[len(lateness) // 2],
            "p99_ms": 1e3 * lateness[int(len(lateness) * 0.99)],
            "max_ms": 1e3 * lateness[-1],
            "ticks": len(lateness),
        }

    return defer.Deferred.fromCoroutine(run())


def _multiprocessing(spec: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing
    import threading

    from bench import refs

    with multiprocessing.Pool(spec["workers"]) as pool:
        workload = spec["workload"]
        if workload == "w2":
            for i in range(W2_WARMUP):
                pool.apply(refs.add, (i, 1))
            times = []
            for i in range(spec["n"]):
                t = time.perf_counter()
                assert pool.apply(refs.add, (i, 1)) == i + 1
                times.append(time.perf_counter() - t)
            times.sort()
            return {"p50_us": 1e6 * times[len(times) // 2], "p99_us": 1e6 * times[int(len(times) * 0.99)]}
        if workload == "w1":
            calls = [(refs.add, (i, 1), i + 1) for i in range(spec["n"])]
            inFlight = 100
        elif workload == "w3":
            calls = [(refs.burn, (spec["burn"],), None) for _ in range(spec["n"])]
            inFlight = 100
        else:
            value = "x" * spec["size"]
            calls = [(refs.echo, (value,), value) for _ in range(spec["n"])]
            inFlight = 50
        slots = threading.Semaphore(inFlight)
        bad = []

        def finished(expected: Any) -> Any:
            def check(result: Any) -> None:
                if expected is not None and result != expected:
                    bad.append(result)
                slots.release()

            return check

        start = time.perf_counter()
        results = []
        for function, args, expected in calls:
            slots.acquire()
            results.append(pool.apply_async(function, args, callback=finished(expected)))
        for r in results:
            r.wait()
        elapsed = time.perf_counter() - start
        assert not bad
        out: dict[str, Any] = {"seconds": elapsed, "calls_per_s": len(calls) / elapsed}
        if workload == "w4":
            out["mb_per_s"] = len(calls) * spec["size"] * 2 / elapsed / 1e6
        return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    if kind == "multiprocessing":
        print(json.dumps(_multiprocessing(spec)))
        return
    from twisted.internet import task

    runner = {"ampoule": _ampoule, "taskd-client": _taskdClient, "pipe": _pipe, "w5": _responsiveness}[kind]
    results: list[Any] = []

    def go(reactor: Any) -> Any:
        return runner(spec, reactor).addCallback(results.append)

    try:
        task.react(go)
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(results[0]))


if __name__ == "__main__":
    main()
