#!/usr/bin/env python3
"""What a person sees of a page: loads URL in headless Chromium (Debian's chromium and
chromedriver) at a desktop and a phone width, saves a full-page screenshot of each in OUTDIR,
and prints JSON with, per width, the rendered visible text, the page's scroll width and the
window's inner width (a page wider than the window makes a phone user scroll sideways).

usage: look.py URL OUTDIR
"""
import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def main(url, outdir):
    os.makedirs(outdir, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("PGSC_TEST_CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="pgsc-chromium-")
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    service = Service(os.environ.get("PGSC_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    seen = {}
    try:
        for name, (width, height) in WIDTHS.items():
            driver.set_window_size(width, height)
            driver.get(url)
            inner = driver.execute_script("return window.innerWidth")
            scroll = driver.execute_script("return document.documentElement.scrollWidth")
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, max(height, full) + 200)
            shot = os.path.join(outdir, f"status-{name}.png")
            driver.save_screenshot(shot)
            seen[name] = {
                "text": driver.find_element(By.TAG_NAME, "body").text,
                "title": driver.title,
                "inner_width": inner,
                "scroll_width": scroll,
                "screenshot": shot,
                "scripts": len(driver.find_elements(By.TAG_NAME, "script")),
                "svg_charts": len(driver.find_elements(By.CSS_SELECTOR, "figure svg")),
            }
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
