"""The web console in a real browser: Debian's chromium, headless, driven through Debian's chromedriver by Selenium
(SE_OFFLINE and the driver's path given, so Selenium Manager fetches nothing). Against a controller on the
in-memory runtime and the loopback identity provider: signing in through SSO and with a token, the pools page, a
job's log growing live while it runs, approving a job that awaits approval, searching the audit trail; the strict
CSP must not have blocked anything. Each page is saved as a PNG under $ORCHESTRATOR_SCREENSHOTS (default
artifacts/screenshots; CI keeps .ci/artifacts/screenshots).

Skipped when chromium, chromedriver or selenium is missing, unless ORCHESTRATOR_REQUIRE_BROWSER=1 (CI): then the
tests fail. Selenium blocks, and the controller runs on the test's event loop: every browser step runs in a
thread (`step`)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import RunningController, job_spec
from console_rig import USERS, start_console, token_of
from fakes import Side, runs
from oidc_provider import OidcProvider
from tarballs import tar_bytes

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - reported by the `driver` fixture
    webdriver = None  # type: ignore[assignment]

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER") == "1"
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("ORCHESTRATOR_SCREENSHOTS") or REPO / "artifacts" / "screenshots")
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error", "rejected"}
NONCE = "cd" * 16  # the side channel's nonce, fixed so the fake container can hand back artifacts
T = TypeVar("T")


def missing_browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if webdriver is None:
        missing.append("the selenium package")
    return ", ".join(missing) or None


async def step(fn: Callable[..., T], *args: Any) -> T:
    """A blocking browser step, off the event loop the controller answers on."""
    return await asyncio.to_thread(fn, *args)


class Console:
    """The console as a person sees it, through the browser."""

    def __init__(self, driver: Any, base: str, name: str) -> None:
        self.driver = driver
        self.base = base
        self.name = name

    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.base}/console{fragment}")

    def wait(self, condition: Callable[[Any], Any], timeout: float = 20, what: str = "") -> Any:
        ignored = (StaleElementReferenceException,)
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(
            condition, what
        )

    def text(self, element_id: str) -> str:
        found = self.driver.find_elements(By.ID, element_id)
        return str(found[0].get_property("textContent") or "") if found else ""

    def wait_text(self, element_id: str, text: str, timeout: float = 20) -> str:
        try:
            self.wait(lambda d: text in self.text(element_id), timeout)
        except TimeoutException:
            raise AssertionError(f"no {text!r} in #{element_id} after {timeout} s: {self.text(element_id)!r}") from None
        return self.text(element_id)

    def type(self, element_id: str, text: str) -> None:
        field = self.wait(lambda d: d.find_element(By.ID, element_id))
        field.clear()
        field.send_keys(text)

    def click(self, element_id: str) -> None:
        self.wait(lambda d: d.find_element(By.ID, element_id)).click()

    def click_css(self, selector: str) -> None:
        self.wait(lambda d: d.find_element(By.CSS_SELECTOR, selector)).click()

    def choose(self, select_id: str, value: str) -> None:
        self.wait(lambda d: d.find_element(By.CSS_SELECTOR, f'#{select_id} option[value="{value}"]'))  # loaded late
        Select(self.driver.find_element(By.ID, select_id)).select_by_value(value)

    def source(self) -> str:
        return str(self.driver.page_source)

    def cookies(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.driver.get_cookies()}

    def rows(self, table_id: str) -> list[list[str]]:
        return [
            [td.get_property("textContent") for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in self.driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
        ]

    def sign_in_sso(self, user: str) -> None:
        self.open()
        self.type("login_hint", user)
        self.click("sso-button")  # console -> provider -> callback -> console, all redirects
        self.wait_text("who", f"{USERS[user]['email']} (SSO)")

    def shot(self, page: str) -> Path:
        """A PNG of the whole page, below the fold too (Chrome's DevTools protocol, as a full-page capture)."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{page}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def body_text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").get_property("innerText"))

    def csp_violations(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]]


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    problem = missing_browser()
    if problem is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"ORCHESTRATOR_REQUIRE_BROWSER=1 but {problem} is missing (.ci/setup installs them)")
        pytest.skip(f"{problem} missing: apt-get install chromium chromium-driver (CI requires them)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1360,900",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        "--disable-sync", "--password-store=basic", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start through chromedriver: {exc.msg}")
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
async def idp() -> AsyncIterator[OidcProvider]:
    provider = await OidcProvider(users=dict(USERS)).start()
    yield provider
    await provider.stop()


@pytest.fixture
async def ctl(fake_controller_factory: Any, idp: OidcProvider, monkeypatch: pytest.MonkeyPatch) -> RunningController:
    monkeypatch.setattr("orchestrator.runtime.workspace.secrets.token_hex", lambda n: NONCE)
    return await start_console(fake_controller_factory, idp)


@pytest.fixture
def console(driver: Any, ctl: RunningController, request: pytest.FixtureRequest) -> Iterator[Console]:
    page = Console(driver, ctl.url, request.node.name.removeprefix("test_"))
    yield page
    assert page.csp_violations() == []  # the strict CSP blocked nothing the console needed
    shown = re.findall(r"\b(?:null|undefined|NaN|\[object Object\])", page.body_text())
    assert shown == [], "a value the page failed to render"


async def api(ctl: RunningController, path: str) -> Any:
    status, body = await ctl.api("GET", path, token=token_of("boss"))
    assert status == 200, body
    return body


async def wait_status(ctl: RunningController, job_id: str, statuses: set[str]) -> dict[str, Any]:
    for _ in range(600):
        job = await api(ctl, f"/api/v1/jobs/{job_id}")
        if job["status"] in statuses:
            return dict(job)
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def build(*lines: bytes | float) -> Callable[[Any], Any]:
    """A container program: `lines` (numbers are pauses), then its artifact dist/app.tar.gz over the side channel."""
    section = f"ORCH1 {NONCE} artifacts\n".encode() + tar_bytes({"dist/app.tar.gz": b"\x1f\x8b fake build output"})
    return lambda spec: runs(*lines, Side(section), exit_code=0)


def built_job(**overrides: Any) -> dict[str, Any]:
    commands = ["make fetch", "make build", "make test"]
    return job_spec(repository="org/app", commands=commands, artifacts={"paths": ["dist"]}, **overrides)


async def test_sign_in_with_sso_and_see_the_pools(ctl: RunningController, console: Console) -> None:
    ctl.controller.engine.program = lambda spec: runs(b"busy\n", exit_code=None)  # type: ignore[attr-defined]
    running = [job_spec(repository="org/app") for _ in range(5)]  # the pool runs 4 at a time: one waits
    for spec in running:
        assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, running[3]["id"], {"running"})
    assert (await ctl.post_webhook(job_spec(pool="gated", sender="carol")))[0] == 202  # waits for a person
    await step(console.open)
    await step(console.wait_text, "sso-button", "Sign in with SSO")
    await step(console.shot, "login")
    await step(console.sign_in_sso, "alice")
    await step(console.wait, lambda d: len(console.rows("pools-table")) == 2)
    rows = {row[0]: row for row in await step(console.rows, "pools-table")}
    assert rows["default"][:5] == ["default", "1", "4", "0 / 0", "4"]
    assert rows["gated"][:5] == ["gated", "0", "0", "0 / 0", "4"]
    assert (await step(console.wait_text, "awaiting", "1 job awaiting approval")).startswith("1 job")
    await step(console.shot, "pools")
    for spec in running:
        status, _ = await ctl.api("POST", f"/api/v1/jobs/{spec['id']}/cancel", token=token_of("ops"))
        assert status == 200
        await wait_status(ctl, spec["id"], FINAL)


async def test_a_jobs_log_grows_live_while_it_runs(ctl: RunningController, console: Console) -> None:
    ctl.controller.engine.program = build(  # type: ignore[attr-defined]
        b"$ make fetch\nfetching org/app@3f78685\n", 2.5, b"$ make build\ncompiling 12 files\n", 2.5,
        b"$ make test\n", 3.0, b"42 passed in 1.9s\n",
    )  # fmt: skip
    await step(console.sign_in_sso, "bob")
    spec = built_job()
    assert (await ctl.post_webhook(spec))[0] == 202
    await step(console.open, "#/jobs")
    await step(console.wait, lambda d: any(r[0] == spec["id"] for r in console.rows("jobs-table")))
    await step(console.shot, "jobs")
    await step(console.click_css, f'#jobs-table a[href="#/jobs/{spec["id"]}"]')  # on to the job's own page

    await step(console.wait_text, "log", "compiling 12 files")
    log = await step(console.text, "log")
    assert "fetching org/app@3f78685" in log and "42 passed" not in log
    assert (await api(ctl, f"/api/v1/jobs/{spec['id']}"))["status"] == "running"  # live: before the job ends
    assert "following live" in await step(console.text, "log-status")
    await step(console.shot, "job-running")

    await step(console.wait_text, "log", "42 passed in 1.9s")
    await step(console.wait_text, "log-status", "log complete (succeeded)")
    assert (await step(console.text, "log")).count("compiling 12 files") == 1  # no line twice
    await step(console.wait_text, "job-status", "succeeded")
    await step(console.wait_text, "verdict-text", "Verified: signed by the controller's key")
    await step(console.wait, lambda d: console.rows("artifacts-table"))
    (artifact,) = await step(console.rows, "artifacts-table")
    assert artifact[:2] == ["dist/app.tar.gz", str(len(b"\x1f\x8b fake build output"))]
    timeline = await step(console.text, "timeline")
    assert "received" in timeline and "started" in timeline and "exit code 0" in timeline
    await step(console.shot, "job")


async def test_approve_a_job_awaiting_approval(ctl: RunningController, console: Console) -> None:
    ctl.controller.engine.program = build(  # type: ignore[attr-defined]
        b"$ make fetch\n", 0.2, b"$ make build\ncompiling 12 files\n", 0.2, b"$ make test\n42 passed in 1.9s\n"
    )
    spec = built_job(pool="gated", sender="carol")
    assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, spec["id"], {"awaiting_approval"})
    await step(console.sign_in_sso, "alice")
    await step(console.wait_text, "awaiting", "1 job awaiting approval")
    await step(console.click_css, "#awaiting a")  # the pools page points at the waiting jobs
    await step(console.wait, lambda d: [r[0] for r in console.rows("jobs-table")] == [spec["id"]])
    await step(console.choose, "filter-pool", "default")  # the filters narrow the list down
    await step(console.wait_text, "jobs", "No job matches.")
    assert (await step(console.driver.execute_script, "return location.hash")) == (
        "#/jobs?status=awaiting_approval&pool=default"
    )
    await step(console.choose, "filter-pool", "gated")
    await step(console.click_css, f'#jobs-table a[href="#/jobs/{spec["id"]}"]')
    await step(console.wait_text, "job-status", "awaiting approval")
    assert "awaiting approval" in await step(console.text, "timeline")
    await step(console.type, "approval-comment", "release 1.4: reviewed the diff")
    await step(console.shot, "approval")
    await step(console.click, "approve")

    await step(console.wait_text, "approval-step", "approved by alice@example.com")
    assert "release 1.4: reviewed the diff" in await step(console.text, "approval-step")
    job = await wait_status(ctl, spec["id"], FINAL)
    assert job["status"] == "succeeded"
    assert (job["approval"]["decision"], job["approval"]["by"]) == ("approved", "alice@example.com")
    assert job["approval"]["comment"] == "release 1.4: reviewed the diff"
    await step(console.wait_text, "job-status", "succeeded")
    await step(console.wait_text, "log-status", "log complete (succeeded)")
    await step(console.wait_text, "verdict-text", "Verified")
    assert "approved by alice@example.com" in await step(console.text, "verdict")  # the signed approval
    await step(console.shot, "job-approved")


async def test_search_the_audit_trail(ctl: RunningController, console: Console) -> None:
    await step(console.sign_in_sso, "alice")
    spec = job_spec(repository="org/app")
    assert (await ctl.post_webhook(spec))[0] == 202
    await wait_status(ctl, spec["id"], FINAL)
    await step(console.click, "nav-audit")
    await step(console.type, "audit-action", "console.*")
    await step(console.click, "audit-search")
    await step(console.wait, lambda d: console.rows("audit-table"))
    (login,) = await step(console.rows, "audit-table")
    assert login[2:6] == ["alice@example.com (operator+approver+auditor)", "console.login", "—", "ok"]

    await step(console.open, f"#/audit?job={spec['id']}&limit=2")  # this job's records, two at a time
    await step(console.wait, lambda d: len(console.rows("audit-table")) == 2)
    await step(console.click, "audit-more")
    await step(console.wait, lambda d: len(console.rows("audit-table")) == 4)
    rows = await step(console.rows, "audit-table")
    seqs = [int(r[0]) for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    trail = (await api(ctl, f"/api/v1/audit?job={spec['id']}&limit=4"))["records"]
    assert [r[3] for r in rows] == [hit["record"]["action"] for hit in trail]
    assert [r[0] for r in rows] == [str(hit["seq"]) for hit in trail]
    await step(console.shot, "audit")


async def test_sign_in_with_a_token_and_out_again(ctl: RunningController, console: Console) -> None:
    typed = token_of("dash")
    await step(console.open)
    await step(console.type, "token", "not-a-token")
    await step(console.click, "token-submit")
    await step(console.wait_text, "login-feedback", "missing or invalid bearer token")
    await step(console.type, "token", typed)
    await step(console.shot, "token-login")
    await step(console.click, "token-submit")
    await step(console.wait_text, "who", "dash (token)")
    await step(console.wait, lambda d: console.rows("pools-table"))
    page = await step(console.source)
    assert typed not in page
    assert 'id="nav-audit"' not in page and 'id="nav-jobs"' in page  # a viewer: no audit search offered
    session = (await step(console.cookies))["orch_session"]
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/")
    assert typed not in session["value"]

    await step(console.click, "sign-out")
    await step(console.wait_text, "token-submit", "Sign in with token")
    await step(console.driver.refresh)  # the session is gone on the server, not just in the page
    await step(console.wait_text, "token-submit", "Sign in with token")
    assert "orch_session" not in await step(console.cookies)
