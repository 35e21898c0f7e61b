"""The admin page end to end in a real headless browser (Debian's chromium and
chromedriver, driven by selenium) against a real `wuma serve`: log in with a token, see
campaigns, pools with their burn-down and the statistics, pause a campaign and create
one through the page. Leaves a screenshot in test-artifacts/admin-page.png."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from admin_world import WHO, WINDOW, build_admin_world, consumer_rule
from server import ROOT, Server

from admin.service import Admin
from engine.scan import ScanRequest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "test-artifacts" / "admin-page.png"
XSS_NAME = '<img src=x onerror="document.title=\'pwned\'">Summer <b>draw</b>'


@pytest.fixture(scope="session")
def browser_binaries():
    """Debian's chromium and chromedriver; installed with apt-get when missing (CI runs as
    root on a fresh machine). Skips only when they cannot be installed here."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("needs chromium and chromium-driver: not installed, and installing them needs root"
                        " and apt-get (run: apt-get install -y chromium chromium-driver)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log = []
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            log.append(r.stdout[-1500:] + r.stderr[-1500:])
            if r.returncode != 0:
                break
        if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
            pytest.skip("could not install chromium and chromium-driver with apt-get:\n" + "\n".join(log))
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A world with two campaigns and five days of consumer scans (a burn-down to draw)."""
    path = tmp_path_factory.mktemp("admin-page") / "wuma-data"
    w = build_admin_world(path)
    admin, data = w["admin"], w["data"]
    caps, cases = w["caps"].id, w["cases"].id
    draw = admin.campaigns.create({**consumer_rule(caps, name=XSS_NAME), "target": {"serials": [[caps, 0, 23]]},
                                   "rebates": [{"to": "store", "amount": 20}]}, who=WHO)
    admin.campaigns.create({"name": "Open-case reward", "pool": "launch", "window": WINDOW,
                            "trigger": {"code_role": "case_inner", "actor_role": "store"},
                            "target": {"batches": [cases]}, "reward": {"kind": "fixed", "amount": 200}}, who=WHO)
    now = time.time()
    for day in range(5):  # scans on each of the last five days
        at = now - (4 - day) * 86400
        pipeline = Admin(data, clock=lambda at=at: at).scan_pipeline()
        for i in range(day + 1):
            serial = day * 5 + i
            code = data.codes.code(w["caps"], serial, "cap_inner")
            region = "330106" if serial == 11 else "440106"  # one diverted scan
            pipeline.scan(ScanRequest(code=code, actor_id=f"u-{serial}", region=region, device=f"d-{serial}"))
        pipeline.scans.close()
    admin.close()
    data.close()
    w["draw"] = draw
    w["server"] = Server(path)
    yield w
    w["server"].stop()


@pytest.fixture(scope="module")
def browser(browser_binaries, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(chromedriver)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, predicate, what: str, timeout: float = 15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: predicate(d), message=what)


def _api(live, path: str) -> dict:
    status, doc = live["server"].request("GET", path, headers={"Authorization": f"Bearer {live['tokens']['viewer']}"})
    assert status == 200, doc
    return doc


def test_admin_page_in_a_real_browser(live, browser, capsys):
    from selenium.webdriver.common.by import By

    d = browser
    base = f"http://127.0.0.1:{live['server'].port}"
    d.get(f"{base}/admin")
    assert d.title == "Wuma admin"

    # A wrong token is refused and the login form stays.
    d.find_element(By.ID, "token").send_keys("wma_operator-1_" + "0" * 64)
    d.find_element(By.ID, "login-button").click()
    _wait(d, lambda d: d.find_element(By.ID, "login-error").text, "an error for a wrong token")
    assert d.find_element(By.ID, "app").get_attribute("hidden") is not None

    # Log in as an operator: campaigns, pools, statistics, batches render.
    d.find_element(By.ID, "token").send_keys(live["tokens"]["operator"])
    d.find_element(By.ID, "login-button").click()
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"), "the page to load")
    assert d.find_element(By.ID, "status").text.startswith("Up to date"), d.find_element(By.ID, "status").text
    assert d.find_element(By.ID, "whoami").text == "operator-1 (operator)"
    assert d.execute_script("return sessionStorage.getItem('wuma-admin-token')") == live["tokens"]["operator"]

    rows = d.find_elements(By.CSS_SELECTOR, "#campaigns tbody tr")
    names = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
    assert names == [XSS_NAME, "Open-case reward"]
    # APPSEC: the campaign name is shown as text; its markup never became elements.
    assert d.find_elements(By.CSS_SELECTOR, "#campaigns img, #campaigns b") == []
    assert d.title == "Wuma admin"

    pool = d.find_element(By.CSS_SELECTOR, '.pool[data-pool-id="launch"]')
    assert "Launch budget" in pool.text
    bars = pool.find_elements(By.CSS_SELECTOR, "svg rect.bar")
    assert len(bars) == 5  # a bar per day with spend: the burn-down
    assert pool.find_elements(By.CSS_SELECTOR, "svg polyline.left")
    spent = _api(live, "/admin/api/pools/launch")["spent"]
    assert spent == 14 * 100  # 15 scans; serial 24 is outside the draw
    assert f"¥{spent / 100:.2f} of ¥1000.00 spent" in pool.text

    charts = {c.get_attribute("data-stat"): c for c in d.find_elements(By.CSS_SELECTOR, "#stats .chart")}
    assert {"scans_by_day", "scans_by_province", "scan_rate", "pools", "campaigns", "diversion",
            "top_stores"} <= set(charts)
    assert len(charts["scans_by_day"].find_elements(By.CSS_SELECTOR, "rect.bar")) == 5
    assert charts["diversion"].find_elements(By.CSS_SELECTOR, "rect.bar")
    # the scanner's own rewards, the rebates apart (the ledger's grants hold both)
    heads = [h.text for h in charts["campaigns"].find_elements(By.TAG_NAME, "th")]
    assert heads[3:] == ["rewards", "vouchers", "redeemed", "store rebates", "distributor rebates"]
    assert "14 · ¥14.00" in charts["campaigns"].text
    assert "gz-1" in d.find_element(By.ID, "alert-counts").text
    batches = d.find_elements(By.CSS_SELECTOR, "#batches tbody tr")
    # a batch's state, with how many of its units are activated (as `wuma batch list`)
    assert [r.find_elements(By.TAG_NAME, "td")[4].text for r in batches] == [
        "activated (48 of 48)", "activated (2 of 2)", "activated (1 of 1)", "generated"]

    # Pause the draw through the page; the API says paused.
    cid = live["draw"].id
    d.find_element(By.CSS_SELECTOR, f'button[data-action="pause"][data-id="{cid}"]').click()
    _wait(d, lambda d: d.find_element(By.ID, "status").text == f"Campaign {cid}: pause done", "the pause")
    assert _api(live, f"/admin/api/campaigns/{cid}")["status"] == "paused"
    row = d.find_element(By.CSS_SELECTOR, f'#campaigns tr[data-campaign-id="{cid}"]')
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "paused"
    assert row.find_elements(By.CSS_SELECTOR, 'button[data-action="resume"]')

    # A rule the library refuses: its message is shown, nothing is created.
    d.find_element(By.CSS_SELECTOR, "#create-campaign summary").click()
    rule = {**consumer_rule(live["caps"].id, name="Autumn draw"), "target": {"serials": [[live["caps"].id, 30, 39]]},
            "reward": {"kind": "draw", "tiers": [{"amount": 100, "odds": 0.5}]}}
    box = d.find_element(By.ID, "c-json")
    box.send_keys(json.dumps(rule))
    d.find_element(By.ID, "c-submit").click()
    _wait(d, lambda d: "must sum to 1" in d.find_element(By.ID, "status").text, "the validation message")
    # Fixed, it is created.
    rule["reward"]["tiers"].append({"amount": 0, "odds": 0.5})
    box.clear()
    box.send_keys(json.dumps(rule))
    d.find_element(By.ID, "c-submit").click()
    _wait(d, lambda d: "(Autumn draw) created" in d.find_element(By.ID, "status").text, "the new campaign")
    assert "Autumn draw" in d.find_element(By.ID, "campaigns").text
    created = [c for c in _api(live, "/admin/api/campaigns") if c["name"] == "Autumn draw"]
    assert len(created) == 1 and created[0]["status"] == "active"
    audit = _api(live, "/admin/api/audit?newest_first=true&limit=2")
    assert [(e["who"], e["action"]) for e in audit] == [("token:operator-1", "campaign.create"),
                                                        ("token:operator-1", "campaign.pause")]

    # The whole page, kept as a test artefact.
    d.execute_script("window.scrollTo(0, 0)")
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1400, min(max(height + 120, 1000), 6000))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert d.save_screenshot(str(SCREENSHOT))
    with capsys.disabled():  # shown in every run, not only with -s
        print(f"\nadmin page screenshot: {SCREENSHOT}")

    # No script errors and no CSP violations in the console (the refused token and rule
    # above are logged as failed requests: source "network").
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert errors == []

    # Log out: the token leaves the tab.
    d.find_element(By.ID, "logout").click()
    assert d.execute_script("return sessionStorage.getItem('wuma-admin-token')") is None
    assert d.find_element(By.ID, "login").is_displayed()
