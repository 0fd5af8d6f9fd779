"""The page at ``/`` in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium;
no browser is downloaded): it loads the models, a generation streams into both panes step by step
and finishes, and a screenshot is taken."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,900")


def open_browser(profile: Path):
    """Headless Chromium under Selenium, the system's browser and driver only."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def run_page(driver, url: str, prompt: str, max_tokens: int, steps: int, timeout: float = 60) -> dict:
    """Load the page, generate in both panes, wait for both to finish; what the page showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models"))
    for field, value in (("prompt", prompt), ("max_tokens", max_tokens), ("steps", steps)):
        el = driver.find_element(By.ID, field)
        el.clear()
        el.send_keys(str(value))
    # did a pane ever show undecided positions? Watched inside the page (a generation of a tiny
    # model can start and finish between two of the driver's polls)
    driver.execute_script(
        "window.sawMasked = false; new MutationObserver(() => {"
        " if (document.querySelector('.canvas .m')) window.sawMasked = true; })"
        ".observe(document.body, {subtree: true, childList: true, characterData: true});")
    driver.find_element(By.ID, "go").click()

    def finished(d):
        states = [s.get_attribute("data-state") for s in d.find_elements(By.CSS_SELECTOR, ".status")]
        return all(s in ("done", "error") for s in states) and states
    states = wait.until(finished)
    panes = driver.find_elements(By.CSS_SELECTOR, ".pane")
    return {"states": states, "saw_masked": bool(driver.execute_script("return window.sawMasked")),
            "texts": [p.find_element(By.CSS_SELECTOR, ".canvas").text for p in panes],
            "status": [p.find_element(By.CSS_SELECTOR, ".status").text for p in panes],
            "tps": [p.find_element(By.CSS_SELECTOR, ".tps").text for p in panes],
            "nfe": [p.find_element(By.CSS_SELECTOR, ".nfe").text for p in panes]}


@pytest.mark.slow
def test_page_streams_a_generation_in_two_panes(make_server, tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run does)")
    pytest.importorskip("selenium", reason="selenium is in the test extras (pip install -e '.[test]')")
    with make_server(batch_wait_ms=0) as server:
        driver = open_browser(tmp_path / "profile")
        try:
            seen = run_page(driver, server.url, "to be", max_tokens=24, steps=24)
            shot = tmp_path / "page.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    assert seen["states"] == ["done", "done"], seen["status"]
    assert all(t.startswith("to be") and len(t) == len("to be") + 24 for t in seen["texts"]), seen["texts"]
    assert seen["saw_masked"]                               # the text crystallised step by step
    assert all(float(t) > 0 for t in seen["tps"]) and all(int(n) > 0 for n in seen["nfe"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
