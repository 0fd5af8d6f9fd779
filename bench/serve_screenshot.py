"""A screenshot of the server's page mid-generation (the README's picture), in headless Chromium.

Serves the given runs in this process, opens the page in Debian's chromium under Selenium (the
system browser and driver, nothing downloaded), starts a generation in both panes and saves a PNG
once the first pane has decided ``--at`` of its tokens (masked positions still visible), then
waits for both to finish::

    THUNDERDLM_THREADS=1 python bench/serve_screenshot.py runs/final_block16 runs/final_ar \\
        --out docs/results/serve_page.png
"""
from __future__ import annotations

import argparse
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from thunderdlm.serve.config import ServeConfig
from thunderdlm.serve.server import ServerThread, build_app

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,820")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--at", type=float, default=0.55, help="fraction of tokens decided at the shot")
    p.add_argument("--out", default="docs/results/serve_page.png")
    args = p.parse_args(argv)

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    with ServerThread(build_app(args.runs, ServeConfig(batch_wait_ms=0))) as server:
        d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            d.get(server.url + "/")
            WebDriverWait(d, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models"))
            for field, value in (("prompt", args.prompt), ("max_tokens", args.max_tokens), ("steps", args.steps)):
                el = d.find_element(By.ID, field)
                el.clear()
                el.send_keys(str(value))
            d.find_element(By.ID, "go").click()
            first = d.find_elements(By.CSS_SELECTOR, ".tokens")[0]
            WebDriverWait(d, 120, poll_frequency=0.02).until(
                lambda d: first.text.isdigit() and int(first.text) >= args.at * args.max_tokens)
            d.save_screenshot(args.out)
            WebDriverWait(d, 120).until(lambda d: all(
                s.get_attribute("data-state") in ("done", "error") for s in d.find_elements(By.CSS_SELECTOR, ".status")))
            time.sleep(0.2)
            d.save_screenshot(args.out.replace(".png", "_done.png"))
        finally:
            d.quit()
    print(f"wrote {args.out} (mid-generation) and {args.out.replace('.png', '_done.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
