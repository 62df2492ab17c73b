"""`parhelia ui` in a real browser: Playwright (pinned, tools/ui-test/requirements.txt)
driving Debian's Chromium, for tests/tests/e2e/ui.rs.

    dashboard.py PARHELIA_BIN URL OUT_DIR

The coordinator and the scripted model are the Rust side's (this process inherits the
harness's environment, so `PARHELIA_BIN …` reaches the same state directory). Steps:
the board shows a new task within 1 s of its first event; the task's page draws its
spend with the last point equal to `task show --json`'s cost; choosing two checkpoints
shows the file that changed; an interactive session's terminal shows its screen, keys do
not reach it read-only and do once typing is allowed; a session that waits for input is
"needs input" on the board; requests without the token, with a wrong one, from a
foreign Origin or through another Host name are refused with E411. Screenshots of the
board and a session page go to OUT_DIR. Each step prints one JSON line
`{"step": …, …}`; anything unexpected raises (exit status 1).
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime

from playwright.sync_api import expect, sync_playwright

PARHELIA, URL, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
BASE = URL.split("/?")[0]
TOKEN = URL.split("token=")[1]
CHROMIUM = os.environ.get("PARHELIA_TEST_CHROMIUM", "/usr/bin/chromium")


def out(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def cli(*args):
    done = subprocess.run([PARHELIA, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"parhelia {args} failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return done.stdout


def cli_json(*args):
    return json.loads(cli(*args, "--json"))


def wait_for(what, fn, timeout=90.0, pause=0.2):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)


def ended(task_id):
    t = cli_json("task", "show", task_id)
    return t if t["status"] in ("completed", "failed", "cancelled", "interrupted") else None


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def request(path, method="GET", headers=None, body=None):
    req = urllib.request.Request(BASE + path, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def refusals():
    host = BASE.split("//")[1]
    cases = {}
    cases["no_token"] = request("/api/call/parhelia_task_list", "POST",
                                {"Origin": BASE, "Content-Type": "application/json"}, b"{}")
    cases["wrong_token"] = request("/?token=" + "0" * 64)
    cases["page_without_token"] = request("/")
    cases["foreign_origin"] = request("/api/call/parhelia_task_list", "POST",
                                      {"Authorization": "Bearer " + TOKEN, "Origin": "http://evil.example",
                                       "Content-Type": "application/json"}, b"{}")
    cases["no_origin_post"] = request("/api/call/parhelia_task_list", "POST",
                                      {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}, b"{}")
    cases["rebound_host"] = request("/api/call/parhelia_task_list", "POST",
                                    {"Authorization": "Bearer " + TOKEN, "Host": "evil.example:" + host.split(":")[1],
                                     "Origin": "http://evil.example:" + host.split(":")[1],
                                     "Content-Type": "application/json"}, b"{}")
    cases["allowed"] = request("/api/call/parhelia_task_list", "POST",
                               {"Authorization": "Bearer " + TOKEN, "Origin": BASE,
                                "Content-Type": "application/json"}, b"{}")
    return {k: {"status": s, "e411": "E411" in body} for k, (s, body) in cases.items()}


def terminal_text(page):
    # In view, as a person reading it has it: xterm.js paints nothing while its
    # element is off screen (an IntersectionObserver pauses it), so rows written
    # then read blank in the page until it scrolls into view (seen under load).
    page.locator(".term").scroll_into_view_if_needed()
    return page.locator(".xterm-rows").inner_text()


def main():
    os.makedirs(OUT, exist_ok=True)
    out("refusals", cases=refusals())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # The page's console and errors, for a failure's report.
        page.on("console", lambda m: print(f"console {m.type}: {m.text}", file=sys.stderr))
        page.on("pageerror", lambda e: print(f"page error: {e}", file=sys.stderr))
        try:
            steps(page)
        except Exception:
            print("page text at the failure:\n" + page.locator("body").inner_text(), file=sys.stderr)
            page.screenshot(path=os.path.join(OUT, "failure.png"), full_page=True)
            raise
        browser.close()
    out("done")


def steps(page):
    if True:
        page.goto(URL)
        # The token was traded for a cookie and left the address bar.
        expect(page.locator("h1")).to_have_text("Sessions")
        out("opened", url=page.url)

        # A new task appears on the board within 1 s of its first event.
        created = cli_json("task", "create", "Write two files, then say done.")
        task_a = created["task_id"]
        row = page.locator(f'tr[data-task="{task_a}"]')
        row.wait_for(timeout=60_000)
        seen = time.time()
        events = wait_for("the task's first event", lambda: cli_json("events", "list", "--task", task_a))
        first = min(parse_time(e["time"]) for e in events)
        out("board_new_task", task_id=task_a, after_first_event_s=round(seen - first, 3))

        done = wait_for("task A to end", lambda: ended(task_a))
        if done["status"] != "completed":
            raise AssertionError(f"task A: {done}")
        session_a = done["session_id"]

        # The cost is settled (two equal reads a second apart) before comparing.
        def settled():
            a = cli_json("task", "show", task_a)["cost_usd"]
            time.sleep(1.0)
            b = cli_json("task", "show", task_a)["cost_usd"]
            return (a,) if a == b else None

        (cost,) = wait_for("task A's cost to settle", settled, timeout=60)
        page.goto(f"{BASE}/#/task/{task_a}")
        last = page.locator("#spend-last")
        last.wait_for(timeout=30_000)
        drawn = float(last.get_attribute("data-total"))
        out("spend", cli_cost=cost, chart_last=drawn)

        # Two checkpoints chosen: the diff names the file that changed.
        boxes = page.locator("li[data-checkpoint] input[type=checkbox]")
        expect(boxes.first).to_be_visible(timeout=30_000)
        n = boxes.count()
        boxes.nth(0).check()
        page.locator("li[data-checkpoint] input[type=checkbox]").nth(n - 1).check()
        file_diff = page.locator(".file-diff")
        file_diff.wait_for(timeout=30_000)
        paths = [p.get_attribute("data-path") for p in file_diff.locator("li[data-path]").all()]
        # Each checkpoint after the first says how many files changed since its parent.
        expect(page.locator("[data-changed-of]").last).to_contain_text("files changed", timeout=30_000)
        changed = [c.inner_text() for c in page.locator("[data-changed-of]").all()]
        out("checkpoint_diff", checkpoints=n, paths=paths, changed=changed)
        page.screenshot(path=os.path.join(OUT, "session.png"), full_page=True)

        # An interactive session's terminal: its screen, read-only, then typing.
        created = cli_json("task", "create", "--interactive", "Say that you are ready.")
        task_b = created["task_id"]
        session_b = wait_for("task B's session", lambda: cli_json("task", "show", task_b).get("session_id"))
        wait_for("task B's first answer", lambda: cli_json("session", "show", session_b)["status"] == "idle", timeout=120)
        page.goto(f"{BASE}/#/task/{task_b}")
        page.get_by_role("button", name="Connect the terminal").click()
        try:
            wait_for("the screen in the browser", lambda: "Ready when you are" in terminal_text(page), timeout=60)
        except AssertionError:
            # The session's own pane, as the CLI reads it, beside what the browser shows.
            print("the pane by `session logs`:\n" + cli("session", "logs", session_b), file=sys.stderr)
            print("the browser's terminal:\n" + terminal_text(page), file=sys.stderr)
            raise
        page.locator(".term").click()
        page.keyboard.type("zzqq")
        time.sleep(1.5)
        # `session logs --json`: JSON lines, the pane's screen among them.
        read_only_reached = "zzqq" in cli("session", "logs", session_b, "--json")
        page.locator("#allow-typing").check()
        wait_for("the writable attach", lambda: "typing allowed" in page.locator("#allow-typing").locator("xpath=../..").inner_text(), timeout=30)
        page.locator(".term").click()
        page.keyboard.type("hello keys")
        wait_for("the keys in the session's pane",
                 lambda: "hello keys" in cli("session", "logs", session_b, "--json"), timeout=30)
        out("terminal", read_only_reached=read_only_reached, typed_reached=True, session_id=session_b)

        # A session that waits for input is "needs input" on the board.
        cli("resume", session_a)
        page.goto(f"{BASE}/#/")
        row = page.locator(f'tr[data-task="{task_a}"]')
        try:
            expect(row).to_have_attribute("data-status", "needs_input", timeout=60_000)
        except AssertionError:
            # What the session and its agent say, for the failure's report.
            shown = cli_json("task", "show", task_a)
            print("task A at the failure: " + json.dumps(shown), file=sys.stderr)
            print(cli("events", "list", "--task", task_a), file=sys.stderr)
            log = os.path.join(".parhelia", "containers", shown.get("container_id") or "-", "runtime", "agent.log")
            if os.path.exists(log):
                print("agent.log:\n" + open(log, errors="replace").read()[-6000:], file=sys.stderr)
            raise
        out("needs_input", task_id=task_a)
        page.screenshot(path=os.path.join(OUT, "board.png"), full_page=True)

        # A phone's width: the board still reads (rows become cards).
        page.set_viewport_size({"width": 390, "height": 844})
        expect(page.locator(f'tr[data-task="{task_a}"]')).to_be_visible()
        page.screenshot(path=os.path.join(OUT, "board-phone.png"), full_page=True)


if __name__ == "__main__":
    main()
