"""The guard's web page in a real browser (headless Debian chromium + chromedriver) against a real server."""
from __future__ import annotations

import io
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import headless_chromium
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from neuroprint.data import DataSplits
from neuroprint.guard.inputs import image_to_png

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module."""
    with headless_chromium(tmp_path_factory.mktemp("chromium"), "1200,900") as driver:
        yield driver


def post(url: str, body: dict[str, Any]) -> Any:
    """POST `body` as JSON to `url`; the decoded JSON answer."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def wait_text(driver: WebDriver, element_id: str) -> str:
    """The text of #element_id once it is non-empty."""
    return WebDriverWait(driver, TIMEOUT_S).until(lambda d: d.find_element(By.ID, element_id).text.strip())


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, TIMEOUT_S).until(lambda d: "detectors:" in d.find_element(By.ID, "info").text)


def test_upload_classify_shows_the_servers_verdict(browser: WebDriver, guard_url: str, digits: DataSplits,
                                                   tmp_path: Path) -> None:
    # 8x8 digits as the PNGs hold them (0..255), and the server's labels for exactly those pixels.
    pngs = [image_to_png(x) for x in digits.test.x[:20]]
    images = [[(np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64) / 255).tolist()] for png in pngs]
    served = post(f"{guard_url}/v1/predict", {"inputs": images})["labels"]
    right = [i for i, label in enumerate(served) if label == int(digits.test.y[i])][:3]
    assert len(right) == 3
    open_page(browser, guard_url)
    for i in right:
        path = tmp_path / f"digit-{i}.png"  # 64x64 nearest: the page's 280x280 canvas and block means recover the 8x8
        Image.open(io.BytesIO(pngs[i])).resize((64, 64), Image.Resampling.NEAREST).save(path)
        browser.find_element(By.ID, "clear").click()  # empties the previous result
        browser.find_element(By.ID, "file").send_keys(str(path))
        browser.find_element(By.ID, "classify").click()
        assert wait_text(browser, "label") == str(served[i])
        assert browser.find_element(By.ID, "verdict").get_attribute("data-flagged") in ("true", "false")
        table = browser.find_element(By.ID, "detectors").text
        assert "bank" in table and "mahalanobis" in table
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .track")) == 10
    assert browser.find_element(By.ID, "error").text == ""
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0


def test_draw_classify_and_attack(browser: WebDriver, guard_url: str) -> None:
    open_page(browser, guard_url)
    pad = browser.find_element(By.ID, "pad")
    strokes = [((-40, -90), (0, 100)), ((-60, -80), (60, 0)), ((-40, 80), (90, 0))]  # offsets from the centre
    for (x, y), (dx, dy) in strokes:
        chain = ActionChains(browser, duration=20).move_to_element_with_offset(pad, x, y).click_and_hold()
        for _ in range(5):
            chain.move_by_offset(dx // 5, dy // 5)
        chain.release().perform()
    browser.find_element(By.ID, "classify").click()
    assert wait_text(browser, "label") in [str(k) for k in range(10)]
    browser.find_element(By.ID, "attack").click()
    assert wait_text(browser, "attacked-label") in [str(k) for k in range(10)]
    assert browser.find_element(By.ID, "attacked-verdict").get_attribute("data-flagged") in ("true", "false")
    assert wait_text(browser, "attacked-verdict") in ("clean", "flagged as adversarial")
    eps = browser.find_element(By.ID, "eps")
    eps.clear()
    eps.send_keys("0.9")  # above the server's limit: its one-line error is shown
    browser.find_element(By.ID, "attack").click()
    assert "eps" in wait_text(browser, "error")


def test_page_fetches_nothing_from_other_hosts(browser: WebDriver, guard_url: str) -> None:
    with urllib.request.urlopen(f"{guard_url}/", timeout=TIMEOUT_S) as response:
        html = response.read().decode()
    assert not re.search(r"https?:|(src|href)=\"?//|url\(\s*['\"]?//|@import", html)
    open_page(browser, guard_url)
    browser.find_element(By.ID, "classify").click()
    wait_text(browser, "label")
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(url.endswith("/v1/predict") for url in urls)
    assert all(url.startswith(guard_url + "/") for url in urls), urls
