"""
Tests for L{taskd.registry}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from taskd.registry import Registry, loadTaskModules, registry


def helper() -> int:
    return 1


class RegistryTests(SynchronousTestCase):
    def test_defaultNameIsQualname(self) -> None:
        """
        C{@task} registers a function under its C{__qualname__} and returns
        it unchanged.
        """
        reg = Registry()

        @reg.task
        def send_mail(to: str) -> str:
            return to

        self.assertIs(reg.get("RegistryTests.test_defaultNameIsQualname.<locals>.send_mail"), send_mail)
        self.assertEqual(send_mail("x"), "x")
        reg.task(helper)
        self.assertIs(reg.get("helper"), helper)
        self.assertIn("helper", reg)
        self.assertEqual(len(reg), 2)

    def test_explicitName(self) -> None:
        """
        C{@task(name=...)} registers under the given name.
        """
        reg = Registry()
        decorated = reg.task(name="mail.bulk")(helper)
        self.assertIs(decorated, helper)
        self.assertEqual(list(reg), ["mail.bulk"])

    def test_conflict(self) -> None:
        """
        A second function under a taken name is refused with a message
        naming the holder; registering the same function again is fine.
        """
        reg = Registry()
        reg.register(helper, "x")
        reg.register(helper, "x")
        e = self.assertRaises(ValueError, reg.register, len, "x")
        self.assertEqual(str(e), "task name 'x' is already registered to tests.test_registry.helper")

    def test_badNames(self) -> None:
        """
        Empty names and names with a newline (the worker framing's
        separator) are refused.
        """
        reg = Registry()
        self.assertRaises(ValueError, reg.register, helper, "")
        self.assertRaises(ValueError, reg.register, helper, "a\nb")

    def test_missingName(self) -> None:
        """
        L{Registry.get} gives L{None} for a name never registered.
        """
        self.assertIsNone(Registry().get("os.system"))

    def test_loadTaskModules(self) -> None:
        """
        L{loadTaskModules} imports the named modules, whose decorators fill
        the default registry; a module that fails raises its error.
        """
        loadTaskModules(["taskd.examples"])
        for name in ("add", "echo", "sleep", "burn", "fail", "crash", "pid"):
            self.assertIn(name, registry)
        self.assertRaises(ImportError, loadTaskModules, ["tests.brokentasks"])
        self.assertRaises(ImportError, loadTaskModules, ["no.such.module"])
