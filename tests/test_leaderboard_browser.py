"""The HTML leaderboard in a real browser: headless Chromium sorts a column by a click and filters rows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fr_bench.leaderboard import build_leaderboard, load_published, measured_frame, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# CI installs Debian's chromium and chromium-driver and sets this, so a missing browser fails there
REQUIRED = os.environ.get("FRBENCH_REQUIRE_BROWSER") == "1"
if not (CHROMIUM and DRIVER):
    if REQUIRED:
        raise RuntimeError("FRBENCH_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver") if not REQUIRED else __import__("selenium.webdriver").webdriver

FIVE = ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"]
LOG_DIR = Path(os.environ.get("FRBENCH_TEST_LOG_DIR", Path(__file__).resolve().parent.parent / "test-logs"))


def _record(rid: str, name: str, accs: list[float], demo: bool = False) -> dict:
    tags = {"frbench.stage": "run", "generator": name, **({"frbench.demo": "true"} if demo else {})}
    return {"run_id": rid, "name": name, "status": "FINISHED", "start_time": 1, "end_time": 2, "params": {"generator": name},
            "metrics": {f"{b}/accuracy": a for b, a in zip(FIVE, accs)}, "tags": tags}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = [_record("r1", "alpha", [0.991, 0.90, 0.85, 0.90, 0.91]), _record("r2", "beta", [0.995, 0.88, 0.86, 0.92, 0.90]),
               _record("r3", "gamma", [0.989, 0.93, 0.87, 0.91, 0.92]), _record("r4", "demo-run", [0.999, 0.99, 0.99, 0.99, 0.99], demo=True)]
    board = build_leaderboard(measured_frame(records), load_published(), "avg", "browser", None)
    path = tmp_path_factory.mktemp("html") / "leaderboard.html"
    path.write_text(render(board, "html"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for drivers on the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def _visible_methods(driver) -> list[str]:
    return driver.execute_script(
        "const t=document.getElementById('board');const i=[...t.tHead.rows[0].cells].findIndex(c=>c.dataset.col==='generator');"
        "return [...t.tBodies[0].rows].filter(r=>r.style.display!=='none').map(r=>r.cells[i].textContent.trim());")


def test_clicking_a_header_sorts_the_rows_in_the_browser(browser, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="lfw"]').click()
    methods = _visible_methods(browser)
    lfw = browser.execute_script(
        "const t=document.getElementById('board');const i=[...t.tHead.rows[0].cells].findIndex(c=>c.dataset.col==='lfw');"
        "return [...t.tBodies[0].rows].map(r=>[r.className, r.cells[i].getAttribute('data-v')]);")
    real = [float(v) for cls, v in lfw if cls != "demo" and v]
    assert real == sorted(real, reverse=True) and len(real) > 20  # highest LFW first, published rows included
    assert methods.index("beta") < methods.index("alpha") < methods.index("gamma")  # 99.5 > 99.1 > 98.9
    assert methods[-1].startswith("demo-run")  # demo rows stay last whatever the sort
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="lfw"]').click()  # second click: ascending
    again = _visible_methods(browser)
    assert again.index("gamma") < again.index("alpha") < again.index("beta") and again[-1].startswith("demo-run")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shot = LOG_DIR / "leaderboard-sorted-by-lfw.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_the_source_filter_hides_other_rows(browser, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    box = browser.find_element(By.CSS_SELECTOR, '.filters input[name="source"]')
    box.send_keys("measured")
    assert sorted(_visible_methods(browser)) == ["alpha", "beta", "gamma"]
    box.clear()
    box.send_keys("Vec2Face")
    shown = _visible_methods(browser)
    assert "VFace10K" in shown and "alpha" not in shown
