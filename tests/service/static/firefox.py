"""A small WebDriver BiDi client for Debian's Firefox ESR, for the console's browser tests in Firefox.

Playwright's Firefox needs a patched build of its own (a download), its BiDi mode wants commands that
Firefox ESR lacks, and Debian packages no geckodriver; but Firefox itself speaks the W3C WebDriver BiDi
protocol (`--remote-debugging-port`). `Firefox` starts a headless one on a fresh profile and drives it
over one WebSocket; a `Tab` is a page that records, as the Chromium tests' `Watch` does, every
JavaScript error, console error, response of 500 or more and user prompt (alert, confirm) it meets.
Input goes through the protocol's real input actions (pointer, keys, file inputs), never via the DOM.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

START_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 180.0
POLL_S = 0.1
KEYS = {"Enter": "\ue007", "Tab": "\ue004", "Escape": "\ue00c", "Shift": "\ue008"}
_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
EVENTS = ["log.entryAdded", "network.beforeRequestSent", "network.responseCompleted",
          "browsingContext.userPromptOpened"]

Listener = Callable[[str, dict], None]


class BidiError(RuntimeError):
    """The browser answered a command with an error."""


class Firefox:
    """A headless Firefox (fresh profile in `profile`, its output in `log`) and one BiDi session."""

    def __init__(self, binary: Path, profile: Path, log: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log = log
        environment = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"}
        with log.open("wb") as output:
            command = [str(binary), "--headless", "--no-remote", "--profile", str(profile),
                       "--remote-debugging-port=0"]
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
        self._stack = ExitStack()
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        try:
            self.socket = self._stack.enter_context(
                connect(f"{self._endpoint()}/session", max_size=None, open_timeout=START_TIMEOUT_S))
            capabilities = {"alwaysMatch": {"unhandledPromptBehavior": {"default": "accept"}}}
            session = self.command("session.new", capabilities=capabilities)
            self.version = session["capabilities"]["browserVersion"]
            self.command("session.subscribe", events=EVENTS)
        except BaseException:
            self.close()
            raise

    def _endpoint(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise BidiError(f"firefox exited with {self.process.returncode}: {self.log_tail()}")
            time.sleep(POLL_S)
        raise BidiError(f"firefox did not open WebDriver BiDi in {START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def command(self, method: str, **params: Any) -> dict:
        """Send one command and return its result; events that arrive meanwhile go to the listeners
        (which must not send commands themselves)."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=COMMAND_TIMEOUT_S))
            if message.get("type") == "event":
                for listener in list(self._listeners):
                    listener(message["method"], message["params"])
            elif message.get("id") == ident:
                if message.get("type") == "error":
                    raise BidiError(f"{method}: {message['error']}: {message.get('message')}")
                return message["result"]

    def listen(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def close(self) -> None:
        """End the session and the browser (killed if it does not quit within a minute)."""
        try:
            if self.process.poll() is None and hasattr(self, "socket"):
                self.command("browser.close")
        except (BidiError, OSError, TimeoutError, ValueError):
            pass  # the browser is stopped below in any case
        self._stack.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Tab:
    """A new tab on `base_url` (fresh session storage; `key` put in it before any page script runs, as
    the console's key dialog leaves it), at `viewport`. What went wrong on it is collected: `check()`."""

    def __init__(self, browser: Firefox, base_url: str, *, key: str | None, viewport: dict[str, int]) -> None:
        self.browser = browser
        self.base_url = base_url.rstrip("/")
        self.errors: list[str] = []
        self.server_errors: list[str] = []
        self.prompts: list[str] = []
        self.requested: list[str] = []
        self.loads = 0
        self.context = browser.command("browsingContext.create", type="tab")["context"]
        self._stop_listening = browser.listen(self._on_event)
        if key is not None:
            put_key = (f"() => {{ if (location.origin === {json.dumps(self.base_url)}) "
                       f"sessionStorage.setItem('cgd-api-key', {json.dumps(key)}); }}")
            browser.command("script.addPreloadScript", contexts=[self.context], functionDeclaration=put_key)
        self.resize(viewport)

    def _on_event(self, method: str, params: dict) -> None:
        context = params.get("context") or params.get("source", {}).get("context")
        if context != self.context:
            return
        if method == "log.entryAdded" and params.get("level") == "error":
            self.errors.append(f"{params.get('type')}: {params.get('text')}")
        elif method == "network.beforeRequestSent":
            self.requested.append(params["request"]["url"])
        elif method == "network.responseCompleted":
            status = params["response"]["status"]
            if status >= 500:
                self.server_errors.append(f"{status} {params['request']['url']}")
            if params.get("navigation") and params["request"]["url"].startswith(self.base_url):
                self.loads += 1
        elif method == "browsingContext.userPromptOpened":
            self.prompts.append(f"{params['type']}: {params['message']}")

    def close(self) -> None:
        self._stop_listening()
        self.browser.command("browsingContext.close", context=self.context)

    def check(self, *, allowed_prompts: tuple[str, ...] = ()) -> None:
        """No 5xx, no JavaScript or console error, no prompt but those of `allowed_prompts` (a confirm
        the test answers); an alert would mean that injected script ran."""
        assert not self.server_errors, self.server_errors
        assert not self.errors, self.errors
        unexpected = [p for p in self.prompts if not any(p.startswith(a) for a in allowed_prompts)]
        assert not unexpected, unexpected

    # navigation and reading

    def goto(self, path: str) -> None:
        self.browser.command("browsingContext.navigate", context=self.context, url=f"{self.base_url}{path}",
                             wait="complete")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaited when it is a promise)."""
        return self._evaluate(expression)[1]

    def _evaluate(self, expression: str) -> tuple[bool, Any]:
        """(whether the value is truthy in JavaScript, its JSON value)."""
        result = self.browser.command(
            "script.evaluate", target={"context": self.context}, awaitPromise=True,
            expression=f"(async () => {{ const v = await ({expression}); "
                       "return JSON.stringify([!!v, v ?? null]); })()")
        if result["type"] == "exception":
            raise BidiError(f"{expression}: {result['exceptionDetails']['text']}")
        truthy, value = json.loads(result["result"]["value"])
        return truthy, value

    def wait_for(self, expression: str, what: str, timeout_s: float) -> Any:
        """Poll `expression` until it is truthy (in JavaScript) and return its value; fail with `what`
        and the last value after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            truthy, value = self._evaluate(expression)
            if truthy:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still {value!r} after {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def texts(self, selector: str) -> list[str]:
        elements = f"[...document.querySelectorAll({json.dumps(selector)})]"
        return self.evaluate(f"{elements}.map((element) => element.textContent)")

    def _element(self, selector: str) -> dict:
        result = self.browser.command(
            "script.evaluate", target={"context": self.context}, awaitPromise=False,
            expression=f"document.querySelector({json.dumps(selector)})")["result"]
        if result["type"] != "node":
            raise AssertionError(f"no element matches {selector}")
        return {"sharedId": result["sharedId"]}

    # input, as a user gives it

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        element = self._element(selector)
        self.browser.command("input.performActions", context=self.context, actions=[{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}])

    def press(self, *keys: str) -> None:
        """Key presses: names of `KEYS` or single characters."""
        actions = []
        for key in keys:
            value = KEYS.get(key, key)
            actions += [{"type": "keyDown", "value": value}, {"type": "keyUp", "value": value}]
        self.browser.command("input.performActions", context=self.context,
                             actions=[{"type": "key", "id": "keyboard", "actions": actions}])

    def type_into(self, selector: str, text: str) -> None:
        """Click the field, select what it holds, then type `text` key by key over it."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.press(*text)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an `<input type=file>`, as the file picker does."""
        self.browser.command("input.setFiles", context=self.context, element=self._element(selector),
                             files=[str(path) for path in paths])

    def resize(self, viewport: dict[str, int]) -> None:
        self.browser.command("browsingContext.setViewport", context=self.context, viewport=viewport)

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG."""
        shot = self.browser.command("browsingContext.captureScreenshot", context=self.context,
                                    origin="document")
        path.write_bytes(base64.b64decode(shot["data"]))
