"""The web page at ``/``, in a real headless Chromium (Debian's chromium + chromium-driver, via selenium).

Not skipped when the browser is missing: it fails and says what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Bundle
from service_testkit import CLASS_NAMES, Server, chw_png, encode, photo

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by the fixture, as a failure
    webdriver = None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if webdriver is None:
        pytest.fail("the browser test needs selenium: pip install -e '.[dev]'")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)}: install them with `apt-get install -y chromium chromium-driver`")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def text(driver: WebDriver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def rendered(driver: WebDriver, query: str) -> bool:
    """The page shows the answers for ``query`` (an id or "upload"): 3 classes, a grid of neighbours."""
    return (
        driver.find_element(By.ID, "query").get_attribute("data-query") == query
        and len(driver.find_elements(By.CSS_SELECTOR, "#predictions li")) == 3
        and len(driver.find_elements(By.CSS_SELECTOR, "#neighbors li button")) == 12
        and text(driver, "#status").startswith("Top 3 classes")
    )


def test_web_page(browser: WebDriver, server: Server, client: httpx.Client, bundle: Bundle, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server.url + "/")
    assert browser.title == "SimCLR image search"
    wait.until(lambda d: text(d, "#model-version") == bundle.version)
    assert text(browser, "#index-size") == str(len(bundle.images))

    # A random indexed image: its top-3 classes (what the API says for it) and its neighbours.
    wait.until(lambda d: d.find_element(By.ID, "random").is_enabled())
    browser.find_element(By.ID, "random").click()
    wait.until(lambda d: (d.find_element(By.ID, "query").get_attribute("data-query") or "").isdigit())
    query = browser.find_element(By.ID, "query").get_attribute("data-query")
    wait.until(lambda d: rendered(d, query))
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#predictions .label")]
    api = client.post("/classify", files={"file": ("q.png", chw_png(bundle.images[int(query)]), "image/png")}).json()
    assert labels == [p["label"] for p in api["predictions"]]
    neighbours = browser.find_elements(By.CSS_SELECTOR, "#neighbors li button")
    ids = [b.get_attribute("data-id") for b in neighbours]
    assert query not in ids and len(set(ids)) == 12
    for button in neighbours:
        label = button.find_element(By.CSS_SELECTOR, ".label").text
        assert label in CLASS_NAMES or label == "unlabelled"
        assert -1 <= float(button.find_element(By.CSS_SELECTOR, ".score").text) <= 1
        img = button.find_element(By.TAG_NAME, "img")
        assert img.get_attribute("src").endswith(f"/images/{button.get_attribute('data-id')}?size=96")
        assert img.get_attribute("alt")  # every image is described
    # The thumbnails really load (96 px PNGs from /images).
    wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('#neighbors img')].every(i => i.complete && i.naturalWidth === 96)"))

    # Selecting a neighbour searches from it.
    target = ids[3]
    neighbours[3].click()
    wait.until(lambda d: rendered(d, target))
    assert f"#{target}" in text(browser, "#query-caption")
    assert [b.get_attribute("data-id") for b in browser.find_elements(By.CSS_SELECTOR, "#neighbors li button")] != ids

    # An uploaded file, through the file input (which has a visible label).
    assert browser.find_element(By.CSS_SELECTOR, "label[for=file]").text
    upload = tmp_path / "my photo.png"
    upload.write_bytes(encode(photo(80, 60), "PNG"))
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait.until(lambda d: rendered(d, "upload"))
    assert "my photo.png" in text(browser, "#query-caption")
    assert browser.find_element(By.ID, "query-image").get_attribute("src").startswith("blob:")

    # Not an image: the page says why instead of breaking.
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"plain text, not an image\n" * 10)
    browser.find_element(By.ID, "file").send_keys(str(junk))
    wait.until(lambda d: "not an image" in text(d, "#status"))
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "415" not in e["message"]]
    assert not errors, errors


def neighbours_only(driver: WebDriver, query: str) -> bool:
    """The page shows ``query``'s neighbours and, the model having no classifier, no classes."""
    return (
        driver.find_element(By.ID, "query").get_attribute("data-query") == query
        and len(driver.find_elements(By.CSS_SELECTOR, "#neighbors li button")) == 12
        and text(driver, "#status").startswith("12 nearest neighbours")
    )


def test_web_page_of_a_model_without_classifier(browser: WebDriver, label_free_server: Server, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, WAIT_S)
    version = httpx.get(label_free_server.url + "/model").json()["model_version"]
    browser.get(label_free_server.url + "/")
    wait.until(lambda d: text(d, "#model-version") == version)
    assert not browser.find_element(By.ID, "classes").is_displayed()  # the classes panel is hidden

    wait.until(lambda d: d.find_element(By.ID, "random").is_enabled())
    browser.find_element(By.ID, "random").click()
    wait.until(lambda d: (d.find_element(By.ID, "query").get_attribute("data-query") or "").isdigit())
    query = browser.find_element(By.ID, "query").get_attribute("data-query")
    wait.until(lambda d: neighbours_only(d, query))
    assert all(b.find_element(By.CSS_SELECTOR, ".label").text == "unlabelled" for b in browser.find_elements(By.CSS_SELECTOR, "#neighbors li button"))

    upload = tmp_path / "holiday.png"
    upload.write_bytes(encode(photo(120, 90), "PNG"))
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait.until(lambda d: neighbours_only(d, "upload"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#predictions li") and not browser.find_element(By.ID, "classes").is_displayed()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # /classify (409) is never called
