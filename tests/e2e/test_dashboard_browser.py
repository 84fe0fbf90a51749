"""The web dashboard in a real headless Chromium (issue 16).

A LocalCluster with a token runs real jobs; Debian's ``chromium`` driven by
``chromedriver`` through selenium opens the dashboard, logs in, and checks what a
person would look at and do: the job graph, the subtask table against
``GET /jobs/{id}``, a live rescale started from the page with its timeline, a
checkpoint triggered from the page, the key groups, a failing job's exceptions, a
refused action's error, and no JavaScript console errors. Screenshots of the main
pages go to a temporary directory, or to the directory named by ``SABOT_SCREENSHOTS``
(``SABOT_SCREENSHOTS=docs/screenshots`` refreshes the README's pictures).

Skips (saying why) only when Chromium or chromedriver is not installed
(``apt-get install chromium chromium-driver``; ``.ci/run`` does it).
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from sabot import Stream
from sabot.cluster.local import LocalCluster

from sabot.runtime.generators import zipf_keyed_records

from rescale_jobs import slow_add_value2

pytestmark = pytest.mark.timeout(240)

TOKEN = "dashboard-test-token"
# a test run leaves the checkout as it found it: the README's pictures change only on request
SCREENSHOTS = Path(os.environ.get("SABOT_SCREENSHOTS") or tempfile.mkdtemp(prefix="sabot-screenshots-")).resolve()


def _chromium():
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None)
    return binary, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    if binary is None or driver_path is None:
        pytest.skip(f"Chromium ({binary}) or chromedriver ({driver_path}) not found: "
                    "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1366,768", "--hide-scrollbars", "--lang=en-US", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    # a laptop's screen: the page's viewport itself is 1366 x 768 (screenshots show just that)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def cluster(user_module):
    # the browser shares the machine's two cores with the cluster: a generous heartbeat timeout
    c = LocalCluster(workers=2, slots_per_worker=2, token=TOKEN,
                     coordinator_config={"slot_wait_timeout_s": 20, "heartbeat_timeout_s": 5.0, "restart_strategy":
                                         {"type": "fixed-delay", "attempts": 2, "delay_ms": 200}})
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def console(browser):
    """Fails the test if the page logged a console error (``allow``: substrings expected)."""
    allowed = []
    browser.get_log("browser")  # what earlier steps logged was checked there
    yield allowed
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")
              and not any(a in e["message"] for a in allowed)]
    assert not errors, f"JavaScript console errors: {json.dumps(errors, indent=1)}"


def wait_for(predicate, timeout=20.0, what="condition", interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the page re-rendered under us: try again
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def text_of(browser, selector, by="css selector", tries=40):
    """The element's text; found again when the live page re-rendered it between the find
    and the read (a StaleElementReferenceException)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(tries - 1):
        try:
            return browser.find_element(by, selector).text
        except StaleElementReferenceException:
            time.sleep(0.05)
    return browser.find_element(by, selector).text


def shot(browser, name, top=None):
    """A screenshot of the viewport (1366 x 768), scrolled to the element ``top`` (CSS) or to the top."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if top is None:
        browser.execute_script("window.scrollTo(0, 0)")
    else:
        browser.execute_script(f"document.querySelector({top!r}).scrollIntoView()")
    time.sleep(0.3)  # one more paint
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def streaming_job(name="clicks-per-user"):
    """source (1) -> map (2) -> key_by -> aggregate (2) -> sink (1), running for minutes; Zipf-skewed keys."""
    stream = (
        Stream.from_generator(zipf_keyed_records, total_rows=2_000_000_000, batch_size=1024,
                              parameters={"num_keys": 100_000}, name="events").parallelism(1)
        .map(slow_add_value2, name="enrich").parallelism(2)
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="per-key totals").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(name, default_parallelism=2, shippable=True, checkpoint_interval_ms=3000)


def click(browser, css):
    browser.find_element("css selector", css).click()


def confirm(browser):
    wait_for(lambda: browser.execute_script("return document.getElementById('confirm').open"), 5, "the dialog")
    browser.execute_script("document.getElementById('notice').hidden = true")  # wait for a fresh answer
    click(browser, "#confirm-ok")


def notice(browser):
    """The message shown at the top, as 'notice[ error]: <text>' ('' when none)."""
    return browser.execute_script(
        "const n = document.getElementById('notice'); return n.hidden ? '' : n.className + ': ' + "
        "document.getElementById('notice-text').textContent")


def job_page(browser, cluster, job_id, tab="graph"):
    browser.get(f"{cluster.url}/#/jobs/{job_id}/{tab}")


@pytest.fixture(scope="module")
def job(cluster):
    client = cluster.client()
    job_id = client.submit(streaming_job())
    wait_for(lambda: client.job(job_id)["state"] == "RUNNING", 30, "the job to run")
    yield job_id
    if client.job(job_id)["state"] not in ("FINISHED", "FAILED", "CANCELED"):
        client.cancel(job_id)


# -- the tests (in file order: they share the cluster, the browser and the job) ----------------


def test_login_then_overview_shows_jobs_live(browser, cluster, job, console):
    browser.get(cluster.url + "/")
    wait_for(lambda: browser.find_element("id", "token"), 10, "the login page")
    assert browser.current_url.endswith("/login")
    assert "token" not in browser.current_url.split("/login")[-1]
    shot(browser, "login")
    browser.find_element("id", "token").send_keys("not-the-token")
    click(browser, "#login-submit")
    assert wait_for(lambda: browser.find_element("id", "login-error").text, 10, "the error") == "Wrong token."
    console.append("/login - Failed to load resource: the server responded with a status of 401")
    browser.find_element("id", "token").send_keys(TOKEN)
    click(browser, "#login-submit")
    wait_for(lambda: browser.find_elements("id", "cluster-cards"), 10, "the dashboard")
    cookie = browser.get_cookie("sabot_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    assert TOKEN not in browser.current_url
    wait_for(lambda: browser.find_element("id", "card-workers").text.split("\n")[1] == "2", 10, "two workers")
    # a job submitted now appears without a reload
    client = cluster.client()
    job_id = client.submit(streaming_job("shown-live"))
    row = f"#jobs-table tr[data-key='{job_id}']"
    wait_for(lambda: "RUNNING" in browser.find_element("css selector", row).text, 20, "the new job, RUNNING")
    assert "shown-live" in text_of(browser, row)
    slots = text_of(browser, "card-slots", "id")
    assert "/ 4" in slots and "free" in slots
    rate = f"#jobs-table tr[data-key='{job}'] td[data-col='rate']"
    wait_for(lambda: browser.find_element("css selector", rate).text not in ("–", "0.0"), 15, "a throughput")
    workers = browser.execute_script(
        "return Array.from(document.querySelectorAll('#workers-table tbody tr')).map(r => r.dataset.key)")
    assert sorted(workers) == sorted(cluster.node_ids)
    shot(browser, "overview")
    # ... and its end too
    client.cancel(job_id)
    wait_for(lambda: "CANCELED" in browser.find_element("css selector", row).text, 20, "the job, CANCELED")


def test_job_graph_and_subtask_table_match_the_api(browser, cluster, job, console):
    client = cluster.client()
    job_page(browser, cluster, job)
    expected = {"events": ("source", 1), "enrich": ("map", 2), "per-key totals": ("aggregate", 2), "sink": ("sink", 1)}
    nodes = wait_for(lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('#dag g.node')).map(g => ({name: g.dataset.name, "
        "id: g.dataset.operatorId, p: Number(g.dataset.parallelism), text: g.querySelector('.parallelism')"
        ".textContent, rates: g.querySelector('.rates').textContent}))"), 15, "the DAG")
    assert {n["name"]: n["p"] for n in nodes} == {k: v[1] for k, v in expected.items()}
    for n in nodes:
        assert n["text"].startswith(expected[n["name"]][0]) and n["text"].endswith(f"parallelism {n['p']}")
    edges = browser.execute_script(
        "return Array.from(document.querySelectorAll('#dag g.edge')).map(g => [g.dataset.from, g.dataset.to, "
        "g.dataset.partitioning, g.querySelector('text').textContent])")
    ids = {n["name"]: n["id"] for n in nodes}
    by_pair = {(a, b): (p, label) for a, b, p, label in edges}
    assert by_pair[(ids["events"], ids["enrich"])][0] == "REBALANCE"
    assert by_pair[(ids["enrich"], ids["per-key totals"])] == ("HASH", "HASH [key]")
    assert by_pair[(ids["per-key totals"], ids["sink"])][0] == "REBALANCE"
    assert len(edges) == 3
    # the nodes are coloured and show rates once two reports came in
    wait_for(lambda: "/s" in browser.execute_script(
        f"return document.querySelector(\"#dag g.node[data-operator-id='{ids['enrich']}'] .rates\").textContent")
             and "busy" in browser.execute_script(
        f"return document.querySelector(\"#dag g.node[data-operator-id='{ids['enrich']}'] .shares\").textContent"),
             15, "rates on the map's node")

    def table_matches():
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('#subtasks table.subtask-table tbody tr')).map(tr => "
            "({op: tr.closest('table').dataset.operatorId, key: tr.dataset.key, cells: Object.fromEntries("
            "Array.from(tr.cells).map(td => [td.dataset.col, td.textContent]))}))")
        tasks = client.job(job)["tasks"]
        seen = {r["key"]: r for r in rows}
        if set(seen) != {t["task_id"] for t in tasks}:
            return False
        for t in tasks:
            cells = seen[t["task_id"]]["cells"]
            if (seen[t["task_id"]]["op"] != t["operator_id"] or cells["worker"] != t["node_id"]
                    or cells["slot"] != t["slot_id"] or cells["state"] != t["state"]
                    or cells["subtask"] != str(t["subtask_index"])):
                return False
        return rows

    rows = wait_for(table_matches, 15, "the subtask table to match GET /jobs/{id}")
    assert len(rows) == 6
    busy = [r["cells"]["busy"] for r in rows if r["op"] == ids["enrich"]]
    wait_for(lambda: all("%" in b for b in busy) or all("%" in r["cells"]["busy"] for r in table_matches()
                                                          if r["op"] == ids["enrich"]), 10, "busy shares")
    # the throughput chart has a line per operator after a few samples
    wait_for(lambda: len(browser.find_elements("css selector", "#throughput path.series")) >= 3, 15,
             "the throughput lines")
    # keyboard: the DAG's nodes take the focus, Enter selects one
    node = browser.find_element("css selector", f"#dag g.node[data-operator-id='{ids['per-key totals']}']")
    browser.execute_script("arguments[0].focus()", node)
    node.send_keys("\n")
    assert browser.execute_script("return document.getElementById('rescale-operator').value") == ids["per-key totals"]
    # keyboard: arrow keys move between the tabs
    from selenium.webdriver.common.keys import Keys

    browser.find_element("id", "tab-graph").send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: browser.execute_script("return document.activeElement.id") == "tab-checkpoints"
             and browser.current_url.endswith("/checkpoints"), 5, "the Checkpoints tab")
    browser.find_element("id", "tab-checkpoints").send_keys(Keys.ARROW_LEFT)
    wait_for(lambda: browser.current_url.endswith("/graph") and browser.find_element("id", "panel-graph").is_displayed(),
             5, "the Overview tab again")
    unlabeled = browser.execute_script(
        "return Array.from(document.querySelectorAll('main input, main select')).filter(e => !e.labels || "
        "!e.labels.length).map(e => e.id)")
    assert unlabeled == []
    shot(browser, "job")


def test_rescale_from_the_page_shows_new_parallelism_and_timeline(browser, cluster, job, console):
    from selenium.webdriver.support.ui import Select

    client = cluster.client()
    job_page(browser, cluster, job)
    wait_for(lambda: browser.find_elements("css selector", "#rescale-operator option"), 15, "the rescale form")
    Select(browser.find_element("id", "rescale-operator")).select_by_visible_text("per-key totals")
    info = text_of(browser, "rescale-info", "id")
    free = cluster.client().request("GET", "/overview")["free_slots"]
    assert f"Free slots in the cluster: {free} of 4" in info and "Now 2 subtask(s)" in info
    field = browser.find_element("id", "rescale-parallelism")
    field.clear()
    field.send_keys("3")
    click(browser, "#rescale-submit")
    text = text_of(browser, "confirm-text", "id")
    confirm(browser)
    assert "from 2 to 3" in text
    message = wait_for(lambda: notice(browser), 20, "the answer")
    assert "error" not in message.split(":")[0] and "started" in message, message
    op = next(o["operator_id"] for o in client.job(job)["operators"] if o["name"] == "per-key totals")
    wait_for(lambda: browser.execute_script(
        f"return document.querySelector(\"#dag g.node[data-operator-id='{op}']\").dataset.parallelism") == "3",
        30, "the DAG to show parallelism 3")
    record = wait_for(lambda: [r for r in client.job(job)["rescales"] if r["state"] != "IN_PROGRESS"], 30,
                      "the rescale to end")[-1]
    assert record["state"] == "COMPLETED" and record["new_parallelism"] == 3, record
    click(browser, "#tab-rescales")
    card = f".rescale[data-rescale-id='{record['rescale_id']}']"
    wait_for(lambda: browser.find_element("css selector", card).get_attribute("data-state") == "COMPLETED", 15,
             "the rescale's card")
    steps = browser.execute_script(
        f"return Array.from(document.querySelectorAll(\"{card} li\")).map(li => [li.dataset.step, li.textContent])")
    assert [s for s, _ in steps] == ["requested", "deployed", "switched", "state_moved", "resumed", "completed"]
    api_steps = {s["step"]: s["offset_ms"] for s in client.job(job)["rescales"][-1]["timeline"]}
    for step in ("requested", "deployed", "switched", "state_moved", "completed"):
        assert api_steps[step] is not None
    assert api_steps["requested"] <= api_steps["deployed"] <= api_steps["switched"]
    assert api_steps["deployed"] <= api_steps["state_moved"] <= api_steps["completed"]
    assert all("not yet" not in text for step, text in steps if step != "resumed")
    facts = text_of(browser, card)
    assert "State rows moved" in facts and "Pause of the operator" in facts
    assert len(browser.find_elements("css selector", f"{card} svg.timeline circle")) >= 5
    # the new tasks' first records come in with their next reports: the pause is known then
    wait_for(lambda: "not yet" not in browser.find_element("css selector", f"{card} li[data-step='resumed']").text,
             15, "the new tasks to resume")
    assert client.job(job)["rescales"][-1]["pause_ms"] is not None
    shot(browser, "rescales")
    # the key groups: a heat map over every key group, the table before and after the rescale
    click(browser, "#tab-keygroups")
    view = client.request("GET", f"/jobs/{job}/key-groups")["operators"][0]
    wait_for(lambda: len(browser.find_elements("css selector", ".kg-after rect[data-key-group]"))
             == view["max_parallelism"], 15, "the key-group tables")
    after = browser.execute_script(
        "return Array.from(document.querySelectorAll('.kg-after rect[data-key-group]')).map(r => "
        "Number(r.dataset.subtask))")
    assert after == view["assignment"] and sorted(set(after)) == [0, 1, 2]
    before = browser.execute_script(
        "return Array.from(document.querySelectorAll('.kg-before rect[data-key-group]')).map(r => "
        "Number(r.dataset.subtask))")
    assert sorted(set(before)) == [0, 1]
    wait_for(lambda: "rows per second" in browser.find_element("id", "kg-body").text, 15, "measured load")


def test_checkpoint_from_the_page_appears_in_the_history(browser, cluster, job, console):
    client = cluster.client()
    job_page(browser, cluster, job, "checkpoints")
    wait_for(lambda: browser.find_element("id", "cp-interval").text, 15, "the checkpoints tab")
    assert "3.0 s" in text_of(browser, "cp-interval", "id")

    def triggered():
        click(browser, "#action-checkpoint")
        confirm(browser)
        message = wait_for(lambda: notice(browser), 15, "the answer")
        if "error" in message.split(":")[0]:
            # a periodic checkpoint was in flight: the page shows the API's refusal; try again
            assert "is in progress" in message, message
            browser.execute_script("document.getElementById('notice').hidden = true")
            time.sleep(0.3)
            return None
        return int(message.split("Checkpoint ")[1].split(" ")[0])

    console.append("checkpoints - Failed to load resource: the server responded with a status of 409")
    checkpoint_id = wait_for(triggered, 30, "a checkpoint triggered from the page", interval=0.2)
    row = f"#checkpoint-history tr[data-key='{checkpoint_id}']"
    wait_for(lambda: "COMPLETED" in browser.find_element("css selector", row).text, 30, "the checkpoint, COMPLETED")
    entry = next(h for h in client.checkpoints(job)["history"] if h["id"] == checkpoint_id)
    cells = browser.execute_script(
        f"return Object.fromEntries(Array.from(document.querySelector(\"{row}\").cells).map(td => "
        "[td.dataset.col, td.textContent]))")
    assert cells["acks"] == f"{entry['num_acks']} / {entry['expected']}"
    assert "per-key totals:" in cells["ops"] and entry["operator_sizes"]
    shot(browser, "checkpoints")


def test_auto_rebalance_from_the_page_and_the_tables_before_and_after(browser, cluster, job, console):
    client = cluster.client()
    job_page(browser, cluster, job, "rescales")
    wait_for(lambda: browser.find_element("id", "auto-status").text == "Disabled.", 15, "the auto-rebalance form")
    click(browser, "#auto-enabled")
    for field, value in (("auto-interval", "1"), ("auto-threshold", "0.2")):
        browser.find_element("id", field).clear()
        browser.find_element("id", field).send_keys(value)
    click(browser, "#auto-apply")
    confirm(browser)
    assert wait_for(lambda: notice(browser), 15, "the answer") == "notice: Auto-rebalance enabled."
    assert client.job(job)["auto_rebalance"]["interval_seconds"] == 1.0
    record = wait_for(lambda: [r for r in client.job(job)["rescales"] if r["kind"] == "rebalance"
                               and r["state"] == "COMPLETED"], 40, "a rebalance")[0]
    assert record["imbalance_before"] > 0.2 and record["moved_key_groups"] > 0
    click(browser, "#auto-enabled")  # off again: the next steps want a quiet job
    click(browser, "#auto-apply")
    confirm(browser)
    assert wait_for(lambda: notice(browser), 15, "the answer") == "notice: Auto-rebalance disabled."
    assert client.job(job)["auto_rebalance"] == {"enabled": False}
    card = f".rescale[data-rescale-id='{record['rescale_id']}']"
    wait_for(lambda: "rebalance of per-key totals: 3 → 3" in browser.find_element("css selector", card).text, 15,
             "the rebalance's card")
    click(browser, "#tab-keygroups")
    heading = f"Key-group table around {record['rescale_id']} (rebalance, completed)"
    wait_for(lambda: heading in browser.find_element("id", "kg-body").text, 15, "the rebalance's tables")
    moved = browser.execute_script(
        "return document.querySelectorAll('.kg-after rect[data-key-group][stroke=\"#111\"]').length")
    assert moved == record["moved_key_groups"]
    view = client.request("GET", f"/jobs/{job}/key-groups")["operators"][0]
    assert view["custom_assignment"] and view["rescales"][-1]["rescale_id"] == record["rescale_id"]
    assert "rebalanced (explicit)" in text_of(browser, "kg-body", "id")
    wait_for(lambda: "rows per second" in browser.find_element("id", "kg-body").text, 15, "measured load")
    shot(browser, "key-groups", top="#panel-keygroups")


def test_refused_action_shows_the_api_error(browser, cluster, job, console):
    from selenium.webdriver.support.ui import Select

    job_page(browser, cluster, job)
    wait_for(lambda: browser.find_elements("css selector", "#rescale-operator option"), 15, "the rescale form")
    Select(browser.find_element("id", "rescale-operator")).select_by_visible_text("enrich")
    field = browser.find_element("id", "rescale-parallelism")
    field.clear()
    field.send_keys("40")
    click(browser, "#rescale-submit")
    console.append("rescale - Failed to load resource: the server responded with a status of 409")
    confirm(browser)
    message = wait_for(lambda: notice(browser), 15, "the refusal")
    assert message.startswith("notice error: Refused (HTTP 409): cannot rescale 'enrich' to 40"), message
    # canceling the confirmation sends nothing
    click(browser, "#action-cancel")
    wait_for(lambda: browser.execute_script("return document.getElementById('confirm').open"), 5, "the dialog")
    click(browser, "#confirm-cancel")
    time.sleep(0.5)
    assert cluster.client().job(job)["state"] == "RUNNING"


def test_exceptions_of_a_failing_job(browser, cluster, user_module, console):
    client = cluster.client()
    failing = (Stream.from_table(pa.table({"value": [0.5, 1.0]}))
               .map(f"{user_module}:fail_on_big_value", name="fragile").collect(name="out"))
    job_id = client.submit(failing.to_job_graph("fails-on-big-values", shippable=True))
    assert client.wait(job_id, 60) == "FAILED"
    job_page(browser, cluster, job_id, "exceptions")
    wait_for(lambda: "ZeroDivisionError" in browser.find_element("id", "root-cause").text, 15, "the root cause")
    root = text_of(browser, "root-cause", "id")
    assert "The job failed" in root and "fragile #0" in root
    rows = wait_for(lambda: browser.find_elements("css selector", "#restart-history tbody tr[data-key]"), 15,
                    "the restarts")
    assert len(rows) == 2 == client.request("GET", f"/jobs/{job_id}/exceptions")["restarts"]
    texts = browser.execute_script(  # one read of every row: the table may re-render between reads
        "return Array.from(document.querySelectorAll('#restart-history tbody tr[data-key]')).map(r => r.innerText)")
    assert len(texts) == 2 and all("fragile #0" in t and "value too big" in t for t in texts)
    assert browser.find_element("id", "action-cancel").get_attribute("disabled") is not None
    shot(browser, "exceptions")


def test_cancel_from_the_page(browser, cluster, job, console):
    job_page(browser, cluster, job)
    wait_for(lambda: browser.find_element("id", "job-state").text == "RUNNING", 15, "the job page")
    click(browser, "#action-cancel")
    confirm(browser)
    wait_for(lambda: browser.find_element("id", "job-state").text == "CANCELED", 20, "CANCELED on the page")
    assert cluster.client().job(job)["state"] == "CANCELED"
    assert "is CANCELED" in notice(browser)
