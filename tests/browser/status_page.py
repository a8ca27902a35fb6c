#!/usr/bin/env python3
"""The status page in a real browser: headless Chromium driven over
WebDriver (chromium-driver, Python selenium), against a running ringpost
whose admin listener is ADMIN and whose token is TOKEN.

    status_page.py ADMIN TOKEN RCPT HELD_DOMAIN SCREENSHOT_DIR

Checks, printing each step (what it clicked, what it read):
  1. without the token, /status answers 401 with no numbers;
  2. the overview loads with no console error, and its numbers are the
     admin API's (queued, deferred, pending recipients);
  3. the throttled path shows its throttle and last failure; the
     suspension of HELD_DOMAIN is listed under Holds;
  4. the find box finds the message to RCPT; its link opens its page;
  5. the Delete button asks for confirmation (dismissed: nothing happens;
     accepted: deleted), and the API no longer has the message.
Screenshots of the overview and the message page go to SCREENSHOT_DIR.
Exits 0 when every check holds; prints why and exits 1 otherwise.
"""

import json
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def api(admin, token, method, path):
    req = urllib.request.Request(f"http://{admin}{path}", method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def main():
    admin, token, rcpt, held, shots = sys.argv[1:6]
    base = f"http://{admin}"

    # 1. No token: 401 and no data.
    try:
        urllib.request.urlopen(f"{base}/status", timeout=10)
        check(False, "GET /status without the token is refused")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        check(e.code == 401, f"GET /status without the token: {e.code}")
        check("queued messages" not in body, "the 401 page carries no data")
        check("Basic" in e.headers.get("WWW-Authenticate", ""), "it asks for the token (Basic)")

    options = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1800", "--no-first-run", "--disable-gpu"]:
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        # The token as the browser's user would give it: Basic, on every
        # request of the session (pages and the buttons' calls).
        import base64
        basic = base64.b64encode(f"operator:{token}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": f"Basic {basic}"}})
        wait = WebDriverWait(driver, 15)

        # 2. The overview, its numbers against the API's.
        driver.get(f"{base}/status")
        wait.until(EC.presence_of_element_located((By.ID, "queued")))
        status, summary = api(admin, token, "GET", "/queue/summary")
        check(status == 200, "GET /queue/summary")
        read = {k: driver.find_element(By.ID, k).text for k in ["queued", "deferred", "recipients"]}
        print(f"read  overview: queued {read['queued']}, deferred {read['deferred']}, "
              f"recipients {read['recipients']}; API: {summary['messages']}, "
              f"{summary['deferred']}, {summary['recipients']}", flush=True)
        check(int(read["queued"]) == summary["messages"], "queued matches the API")
        check(int(read["deferred"]) == summary["deferred"], "deferred matches the API")
        check(int(read["recipients"]) == summary["recipients"], "recipients match the API")
        delivered = int(driver.find_element(By.ID, "delivered-hour").text)
        print(f"read  recipients delivered in the last hour: {delivered}", flush=True)
        check(delivered > 0, "the traffic table counts deliveries")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        check(not errors, f"no console error on the overview {errors}")

        # The paths: the greylisting site's throttle and failures, the
        # other's deliveries.
        paths = driver.find_element(By.ID, "paths").text
        print(f"read  paths: {paths!r}", flush=True)
        slow = next((l for l in paths.splitlines() if "127.0.0.3" in l), "")
        check("/s" in slow, "the greylisting site's path shows its throttle")
        check("greylisted" in slow, "and its last failure")

        # 3. The suspension.
        holds = driver.find_element(By.ID, "holds").text
        print(f"read  holds: {holds!r}", flush=True)
        check(held in holds, f"the suspension of {held} is listed")
        driver.save_screenshot(f"{shots}/status-overview.png")

        # 4. Find by recipient, open its page.
        box = driver.find_element(By.NAME, "value")
        box.clear()
        box.send_keys(rcpt)
        print(f"click find by rcpt {rcpt}", flush=True)
        driver.find_element(By.CSS_SELECTOR, "#find button").click()
        wait.until(EC.presence_of_element_located((By.ID, "results")))
        links = driver.find_elements(By.CSS_SELECTOR, "#results a")
        check(len(links) == 1, f"the find box found one message ({len(links)})")
        message_id = links[0].text
        print(f"click {message_id}", flush=True)
        links[0].click()
        wait.until(EC.presence_of_element_located((By.ID, "recipients")))
        check(rcpt in driver.find_element(By.ID, "recipients").text, "its page lists the recipient")
        driver.save_screenshot(f"{shots}/status-message.png")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        check(not errors, f"no console error on the message page {errors}")

        # 5. Delete asks first.
        print("click Delete, dismiss the confirmation", flush=True)
        driver.find_element(By.ID, "delete").click()
        alert = wait.until(EC.alert_is_present())
        print(f"read  confirmation: {alert.text!r}", flush=True)
        check(message_id in alert.text, "the confirmation names the message")
        alert.dismiss()
        time.sleep(0.5)
        status, _ = api(admin, token, "GET", f"/queue/messages/{message_id}")
        check(status == 200, "dismissed: the message is still queued")
        print("click Delete, accept the confirmation", flush=True)
        driver.find_element(By.ID, "delete").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(lambda d: d.find_element(By.ID, "outcome").text.startswith("done"))
        print(f"read  outcome: {driver.find_element(By.ID, 'outcome').text!r}", flush=True)
        status, _ = api(admin, token, "GET", f"/queue/messages/{message_id}")
        check(status == 404, f"accepted: the message is gone ({status})")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        check(not errors, f"no console error after the delete {errors}")
    finally:
        driver.quit()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
