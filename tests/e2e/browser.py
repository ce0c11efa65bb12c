"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver (`make test` installs them)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OUTPUT = Path(__file__).resolve().parents[1] / "output"  # screenshots, one folder per test module (gitignored)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A headless Chromium driven by the chromium-driver that matches it; no browser is downloaded."""
    assert shutil.which(CHROMEDRIVER) and shutil.which(CHROMIUM), "chromium and chromium-driver are needed (make test)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def output_folder(name: str) -> Path:
    folder = OUTPUT / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
