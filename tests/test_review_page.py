"""The review page in a real browser: Debian's headless Chromium (/usr/bin/chromium, /usr/bin/chromedriver) driven
by selenium (docs/REVIEW.md says how to install them; .ci/run does). Skipped, with the reason, where either is
missing or selenium cannot be imported.

What is checked: the keys y / n / u and the arrows, and the buttons, write the verdict files; a reload resumes at
the first item not reviewed, with the verdicts shown; the audio element plays the listening copy of a 2 kHz
and of a 250 kHz recording (no media error, a finite duration, time moving); no request leaves 127.0.0.1 (every
request the server gets, and every resource the browser loaded); the --no-serve index.html works from file://;
a kill -9 of the server between two verdicts leaves both files whole with every verdict given before it.
CONVNET_WRITE_SCREENSHOT=1 also saves the page to docs/review.png.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading

import pytest

from tests.review_fixtures import detect_dir, start_server, verdicts_on_disk

CHROMIUM = os.environ.get("CONVNET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CONVNET_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"no {CHROMIUM} or {CHROMEDRIVER} (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix="convnet-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:      # a browser that cannot start here is a skip, not a failure of the page
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"headless Chromium does not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    return detect_dir(tmp_path_factory.mktemp("review_page"))


class Served:
    def __init__(self, review, server, requests):
        self.review, self.server, self.requests = review, server, requests
        self.dir = review.review_dir

    @property
    def url(self):
        return self.server.url


@pytest.fixture
def served(detected, tmp_path):
    """A fresh review of the detect run, served in a thread; every request the server gets is recorded."""
    from convnet_cli.review.build import prepare
    from convnet_cli.review.server import ReviewServer

    _, det = detected
    review = prepare(str(det), str(tmp_path / "rv"), select="top", progress=False, echo=lambda m: None)
    requests = []
    server = ReviewServer(review, 0, on_request=lambda *r: requests.append(r))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Served(review, server, requests)
    server.shutdown()
    server.server_close()


def until(driver, js, timeout=30):
    """Wait until the JavaScript expression `js` is truthy; -> its value."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(f"return {js};"))


def press(driver, *keys):
    for k in keys:
        ActionChains(driver).send_keys(k).perform()


def open_page(driver, url):
    driver.get(url)
    until(driver, "window.convnetReview !== undefined")


def all_saved(driver):
    until(driver, "window.convnetReview.pending() === 0 && document.getElementById('status').dataset.state === 'saved'")


def current(driver) -> int:
    return driver.execute_script("return window.convnetReview.current();")


def text(driver, el) -> str:
    return driver.find_element(By.ID, el).text


def test_keys_mark_items_and_the_verdict_files_follow(browser, served):
    open_page(browser, served.url)
    assert current(browser) == 1 and text(browser, "progress") == "0 of 6 reviewed"
    press(browser, "y")
    all_saved(browser)
    assert current(browser) == 2                          # a verdict moves on to the next item
    press(browser, "n", "u")
    all_saved(browser)
    assert current(browser) == 4
    press(browser, Keys.ARROW_LEFT)
    assert current(browser) == 3 and text(browser, "verdict") == "unsure"
    press(browser, "y")                                   # a verdict changed
    all_saved(browser)
    press(browser, Keys.ARROW_RIGHT)
    assert current(browser) == 5
    csv_v, table_v = verdicts_on_disk(served.dir)
    assert csv_v == table_v == {1: "true", 2: "false", 3: "true"}
    assert text(browser, "progress") == "3 of 6 reviewed"
    assert browser.find_element(By.CSS_SELECTOR, "#classes .chip").text == "tone 3/6"


def test_buttons_do_what_the_keys_do(browser, served):
    open_page(browser, served.url)

    def click(name):
        browser.find_element(By.ID, name).click()

    click("b-false")
    click("b-unsure")
    click("b-true")
    all_saved(browser)
    assert current(browser) == 4
    click("b-prev")
    click("b-prev")
    assert current(browser) == 2 and text(browser, "verdict") == "unsure"
    click("b-true")
    all_saved(browser)
    click("b-next")
    assert current(browser) == 4
    csv_v, table_v = verdicts_on_disk(served.dir)
    assert csv_v == table_v == {1: "false", 2: "true", 3: "true"}


def test_a_reload_resumes_at_the_first_item_not_reviewed(browser, served):
    open_page(browser, served.url)
    press(browser, "y", "n", Keys.ARROW_RIGHT, "u")         # items 1, 2 and 4; 3 left open
    all_saved(browser)
    browser.refresh()
    until(browser, "window.convnetReview !== undefined")
    assert current(browser) == 3 and text(browser, "verdict") == "not reviewed"
    assert text(browser, "progress") == "3 of 6 reviewed"
    press(browser, Keys.ARROW_LEFT)
    assert text(browser, "verdict") == "false"
    press(browser, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert text(browser, "verdict") == "unsure"


def _go_to(driver, item_id):
    while current(driver) > item_id:
        press(driver, Keys.ARROW_LEFT)
    while current(driver) < item_id:
        press(driver, Keys.ARROW_RIGHT)


def test_the_audio_element_plays_the_listening_copies(browser, served):
    media = served.review.media
    by_rate = {m["sample_rate"]: i for i, m in sorted(media.items())}
    assert {2000, 16000, 250000} <= set(by_rate)
    open_page(browser, served.url)
    for sr in (2000, 16000, 250000):
        item = by_rate[sr]
        _go_to(browser, item)
        until(browser, "document.getElementById('audio').readyState >= 1 || document.getElementById('audio').error")
        state = browser.execute_script("var a = document.getElementById('audio');"
                                       "return [a.error && a.error.code, a.duration, a.currentSrc];")
        m = media[item]
        assert state[0] is None, f"media error {state[0]} for the {sr} Hz recording's listening copy"
        heard = (m["clip_end"] - m["clip_begin"]) * m["slowed"]
        assert abs(state[1] - heard) < 0.05 and state[2].endswith(m["listen"])
        assert ("slowed 10x" in text(browser, "slowed")) == (sr == 250000)
        press(browser, Keys.SPACE)                        # play: time moves
        until(browser, "!document.getElementById('audio').paused && document.getElementById('audio').currentTime > 0.05")
        press(browser, Keys.SPACE)
        until(browser, "document.getElementById('audio').paused")
        assert browser.execute_script("return document.getElementById('status').dataset.state") != "error"


def test_no_request_leaves_127_0_0_1(browser, served):
    open_page(browser, served.url)
    press(browser, "y")
    all_saved(browser)
    press(browser, Keys.SPACE)
    until(browser, "document.getElementById('audio').currentTime > 0")
    press(browser, Keys.SPACE)
    entries = browser.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(function (e) { return e.name; });")
    assert len(entries) >= 3                            # the page, its image, its audio
    assert all(e.startswith(served.url) for e in entries), entries
    port = served.server.server_address[1]
    assert served.requests and all(client == "127.0.0.1" and host == f"127.0.0.1:{port}"
                                   for _, _, client, host in served.requests), served.requests
    html = browser.page_source
    assert "http://" not in html.replace(served.url, "") and "https://" not in html


def test_the_no_serve_page_works_from_a_file(browser, detected, tmp_path):
    from convnet_cli.review.sample import read_sample
    from convnet_cli.review.verdicts import csv_text, table_text
    from tests.helpers import invoke

    _, det = detected
    out = tmp_path / "rv"
    r = invoke(["review", str(det), "--out", str(out), "--no-serve", "--select", "top", "--quiet"])
    assert r.exit_code == 0, r.output
    url = (out / "index.html").as_uri()
    open_page(browser, url)
    assert browser.find_element(By.ID, "filemode").is_displayed()
    until(browser, "document.getElementById('audio').readyState >= 1 && isFinite(document.getElementById('audio').duration)")
    press(browser, "y", "n")
    browser.refresh()
    until(browser, "window.convnetReview !== undefined")
    assert current(browser) == 3 and text(browser, "progress") == "2 of 6 reviewed"   # kept in localStorage
    items, _ = read_sample(str(out))
    got_csv = browser.execute_script("return window.convnetReview.csvText();")
    got_table = browser.execute_script("return window.convnetReview.tableText();")
    assert got_csv == csv_text(items, {1: "true", 2: "false"})            # the file the server would write
    media = __import__("json").loads((out / "media.json").read_text())
    assert got_table == table_text(items, {1: "true", 2: "false"},
                                   {int(k): v["nyquist"] for k, v in media.items()})
    # Chromium keeps no resource timing for file:// loads: every URL in the document is checked instead
    urls = browser.execute_script("return Array.from(document.querySelectorAll('[src],[href]'))"
                                  ".map(function (e) { return e.src || e.href; });")
    assert len(urls) >= 3 and all(u.startswith(("file://", "data:")) for u in urls), urls
    browser.execute_script("localStorage.clear();")


def test_kill_9_between_two_verdicts_keeps_every_verdict_given(browser, detected, tmp_path):
    _, det = detected
    out = tmp_path / "rv"
    p, url = start_server(det, out)
    try:
        open_page(browser, url)
        press(browser, "y")
        all_saved(browser)
        press(browser, "n")
        all_saved(browser)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        csv_v, table_v = verdicts_on_disk(out)
        assert csv_v == table_v == {1: "true", 2: "false"}
        press(browser, "u")                                # the server is gone: the page says so, the mark is taken back
        until(browser, "document.getElementById('status').dataset.state === 'error'")
        assert "not saved" in text(browser, "status")
        press(browser, Keys.ARROW_LEFT)
        assert current(browser) == 3 and text(browser, "verdict") == "not reviewed"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    p, url = start_server(det, out)                        # review again on the folder: the same sample, resumed
    try:
        open_page(browser, url)
        assert current(browser) == 3 and text(browser, "progress") == "2 of 6 reviewed"
    finally:
        p.send_signal(signal.SIGINT)                        # Ctrl-C stops it cleanly
        assert p.wait(30) == 0


def test_screenshot(browser, served):
    """The page with two items marked; CONVNET_WRITE_SCREENSHOT=1 writes it to docs/review.png."""
    open_page(browser, served.url)
    press(browser, "y", "n", Keys.ARROW_LEFT)
    all_saved(browser)
    shot = os.path.join(served.dir, "review.png")
    browser.save_screenshot(shot)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CONVNET_WRITE_SCREENSHOT") == "1":
        shutil.copy(shot, os.path.join(ROOT, "docs", "review.png"))
