"""The playground page at ``/`` in a real headless browser (Debian's chromium and chromedriver): a real audio file
goes in, the streamed answer comes out and equals the API's answer for the same request."""

from __future__ import annotations

import base64
import shutil

import httpx
import pytest

from tests.serve_utils import ServerProcess, digit_files, tiny_model

webdriver = pytest.importorskip("selenium.webdriver")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("chromedriver") or not shutil.which("chromium"),
                                                   reason="needs chromium and chromium-driver (.ci/run installs them)")]


def test_playground_round_trip_with_a_real_audio_file(tmp_path):
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = digit_files(1)[0]
    with ServerProcess(tiny_model(tmp_path / "model"), "--served-model-name", "tiny-salm") as server:
        expected = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-salm", "temperature": 0, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Transcribe the following:"},
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                        "format": "flac"}}]}]}).json()
        expected = expected["choices"][0]["message"]["content"]
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
            assert driver.find_element(By.CSS_SELECTOR, "#model option").get_attribute("value") == "tiny-salm"
            driver.find_element(By.ID, "file").send_keys(str(path))
            driver.find_element(By.ID, "instruction").send_keys("Transcribe the following:")
            driver.find_element(By.ID, "send").click()
            wait.until(lambda d: d.find_element(By.ID, "status").text in ("done",) or
                       d.find_element(By.ID, "status").text.startswith("error"))
            assert driver.find_element(By.ID, "status").text == "done"
            assert driver.find_element(By.ID, "answer").get_attribute("textContent") == expected
        finally:
            driver.quit()
