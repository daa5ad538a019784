"""Headless Chromium for tests: install Debian's package if needed, launch it, drive it over CDP.

No Node, no Selenium: the Chrome DevTools Protocol over one websocket (the ``websocket-client``
package), in flat session mode. Typical use::

    executable = ensure_chromium()                       # may apt-get install chromium
    with HeadlessChromium(executable, download_dir=tmp_path) as browser:
        browser.open(url)
        browser.evaluate("document.title")

Every wait has a deadline, and the browser's whole process group is ended on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
INSTALL_COMMAND = ("apt-get", "install", "-y", "--no-install-recommends", "chromium")
INSTALL_TIMEOUT_S = 900


class ChromiumUnavailable(Exception):
    """Chromium is not installed and this process cannot install it; the message says why."""


class BrowserError(Exception):
    """The browser failed to start, answered with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """The path of an installed Chromium, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def ensure_chromium() -> str:
    """An installed Chromium's path, installing Debian's ``chromium`` package when running as root.

    Raises `ChromiumUnavailable` when it is missing and cannot be installed from here (not
    root, or no apt-get), and `BrowserError` when the installation itself fails.
    """
    existing = find_chromium()
    if existing:
        return existing
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable("chromium is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise ChromiumUnavailable(
            "chromium is not installed; as root: apt-get install --no-install-recommends chromium"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = _run(INSTALL_COMMAND, environment)
    if install.returncode != 0:  # most often stale package lists: refresh them once and retry
        _run(("apt-get", "update"), environment)
        install = _run(INSTALL_COMMAND, environment)
    installed = find_chromium()
    if install.returncode != 0 or installed is None:
        raise BrowserError(f"`{' '.join(INSTALL_COMMAND)}` failed:\n{install.stdout[-3000:]}")
    return installed


def _run(command: tuple[str, ...], environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=INSTALL_TIMEOUT_S
    )


class HeadlessChromium:
    """A headless Chromium with one page, driven over the DevTools protocol.

    ``download_dir``: where downloads land (under the name the page suggests).
    ``timeout``: seconds allowed for start-up and for each protocol call or wait.
    """

    def __init__(self, executable: str, download_dir: str | Path, timeout: float = 30.0):
        self.executable = executable
        self.download_dir = Path(download_dir)
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True)
        self._log = tempfile.TemporaryFile()
        self._process: subprocess.Popen | None = None
        self._socket = None
        self._session_id: str | None = None
        self._next_id = 0

    def __enter__(self) -> HeadlessChromium:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start(self) -> None:
        import websocket  # websocket-client, a test dependency

        self._process = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so close() ends every child too
        )
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        self._wait_for(
            lambda: port_file.is_file() and len(port_file.read_text().splitlines()) >= 2, "the DevTools port"
        )
        port, path = port_file.read_text().splitlines()[:2]
        self._socket = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}", timeout=self.timeout, suppress_origin=True
        )
        self.call(
            "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(self.download_dir), browser_level=True
        )
        target = self.call("Target.createTarget", url="about:blank", browser_level=True)
        attached = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True, browser_level=True)
        self._session_id = attached["sessionId"]

    def call(self, method: str, browser_level: bool = False, **params) -> dict:
        """Send one protocol command (to the page unless ``browser_level``) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if not browser_level:
            message["sessionId"] = self._session_id
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self._socket.recv())
            if reply.get("id") != self._next_id:
                continue  # an event, or the reply to an earlier call that timed out
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error']}")
            return reply.get("result", {})
        raise BrowserError(f"{method}: no reply within {self.timeout} s")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                f"JavaScript error: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Load ``url`` in the page and wait until it has finished loading."""
        self.evaluate("window.__oldPage = true")
        self.call("Page.navigate", url=url)
        self._wait_for(self._new_page_loaded, url)

    def reload(self) -> None:
        """Reload the page and wait until it has finished loading."""
        self.evaluate("window.__oldPage = true")
        self.call("Page.reload")
        self._wait_for(self._new_page_loaded, "the reload")

    def _new_page_loaded(self) -> bool:
        """Whether a page other than the one marked ``__oldPage`` has finished loading."""
        try:
            return bool(self.evaluate("document.readyState === 'complete' && !window.__oldPage"))
        except BrowserError:  # the old page's context went away mid-call
            return False

    def wait_for_download(self, name: str) -> Path:
        """The path of the downloaded file ``name`` once it is complete."""
        path = self.download_dir / name
        self._wait_for(lambda: path.is_file() and not path.with_name(name + ".crdownload").exists(), f"download {name}")
        return path

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrowserError(
                    f"chromium exited with code {self._process.returncode} waiting for {what}:\n{self._log_tail()}"
                )
            if condition():
                return
            time.sleep(0.05)
        raise BrowserError(f"timed out after {self.timeout} s waiting for {what}:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-3000:].decode(errors="replace")

    def close(self) -> None:
        """Close the connection and end the browser's process group; safe to call twice."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self._end_process_group(self._process.pid)
            self._process.wait(timeout=10)
            self._process = None
        self._log.close()
        self._profile.cleanup()

    @staticmethod
    def _end_process_group(group_id: int, timeout: float = 10.0) -> None:
        """SIGKILL whatever of the browser's process group is left, and wait until it is gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(group_id, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.05)
