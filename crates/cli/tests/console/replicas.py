"""The console on two replicas of one cluster (PostgreSQL), in a real
browser: Debian's Chromium driven by Playwright with a CDP virtual
authenticator, as passkeys.py (and its helpers in common.py). Both consoles
are at `localhost` on their own ports (each replica lists both origins in
`[admin] console_origins`, as replicas behind one load balancer list its).

On replica A an admin logs in with the token; alice steps up with her TOTP
code and registers a passkey. She then logs in with it: the ceremony starts
on A (its challenge issued by A) and the browser's answer is sent to B
(Playwright reroutes that one request), which finishes it from the store.
A held call on A is then approved in B's console (after a passkey step-up
on B) and the agent's retry goes through on A once: the same call is held
again afterwards, on A and on B. Called by crates/cli/tests/console.rs with
one JSON argument; writes screenshots to `artefacts`, prints one JSON line.
Any failed check raises (exit status 1)."""

import json
import os
import ssl
import sys
import time

import httpx
from playwright.sync_api import expect, sync_playwright

import common

cfg = json.loads(sys.argv[1])
API_A = cfg["admin_a"]  # https://127.0.0.1:<port>, for API calls (the CA's name)
CONSOLE_A = cfg["console_a"]  # https://localhost:<port>, for the browser
CONSOLE_B = cfg["console_b"]
ART = cfg["artefacts"]
os.makedirs(ART, exist_ok=True)
TIMEOUT = 20_000  # ms, every wait


def shot(page, name):
    common.shot(page, ART, name)


tls = ssl.create_default_context(cafile=cfg["ca"])
api = httpx.Client(verify=tls, timeout=10, headers={"authorization": "Bearer " + cfg["token"]})
agent_tls = ssl.create_default_context(cafile=cfg["ca"])
agent_tls.load_cert_chain(cfg["payer_cert"], cfg["payer_key"])
payer = httpx.Client(verify=agent_tls, timeout=10)


def transfer(gateway):
    r = payer.post(
        gateway + "/bank/transfer?to=bob&amount=7",
        headers={"content-type": "application/json"},
        content=b'{"memo":"across replicas"}',
    )
    return r.status_code, r.json()


def ticket_status(ticket):
    r = api.get(API_A + f"/admin/v1/approvals/{ticket}")
    return r.json().get("status") if r.status_code == 200 else r.status_code


found = {}
enrolled = api.post(API_A + "/admin/v1/admins", json={"name": "alice"})
assert enrolled.status_code == 201, enrolled.text
secret = enrolled.json()["totp_secret"]

with sync_playwright() as p:
    browser, context, page, cdp, authenticator, csp_violations = common.chromium_with_authenticator(
        p, cfg, TIMEOUT
    )

    # On A: the token's login, alice's step-up and her passkey.
    page.goto(CONSOLE_A + "/console/login")
    page.fill("input[name=token]", cfg["token"])
    page.click("form.login button[type=submit]")
    page.wait_for_url(CONSOLE_A + "/console")
    page.goto(CONSOLE_A + "/console/step-up")
    common.step_up_with_totp(page, "alice", secret)
    common.register_passkey(page, "alice", "laptop")
    shot(page, "r1-passkey-registered-on-a")
    # Her admin credential (role approver), in the token's open window on A.
    made = api.post(API_A + "/admin/v1/admin-tokens", json={"name": "alice", "role": "approver"})
    assert made.status_code == 201, made.text
    page.click("header .logout button")
    page.wait_for_url(CONSOLE_A + "/console/login")

    # Her passkey login: options (the challenge) from A, the answer to B.
    rerouted = []

    def to_b(route):
        rerouted.append(route.request.url)
        route.continue_(url=CONSOLE_B + "/console/login/passkey")

    page.route(CONSOLE_A + "/console/login/passkey", to_b)
    with page.expect_response(lambda r: r.url.endswith("/console/login/passkey/options")) as options:
        common.passkey_login(page, CONSOLE_A, "alice")
    assert options.value.url.startswith(CONSOLE_A), options.value.url
    page.wait_for_url(CONSOLE_A + "/console")
    page.unroute(CONSOLE_A + "/console/login/passkey")
    assert rerouted == [CONSOLE_A + "/console/login/passkey"], rerouted
    expect(page.locator("header .who")).to_have_text("alice (approver)")
    found["login"] = page.locator("header .who").inner_text()
    found["login_finished_on"] = "B"
    shot(page, "r2-logged-in-finished-on-b")

    # A held call on A, approved in B's console.
    status, answer = transfer(cfg["gateway_a"])
    assert status == 403 and answer["error"]["code"] == "approval_required", answer
    ticket = answer["error"]["ticket"]
    found["ticket"] = ticket
    card = page.locator(f'article[data-ticket="{ticket}"]')
    for _ in range(100):
        page.goto(CONSOLE_B + "/console/approvals")
        if card.count() > 0:
            break
        time.sleep(0.2)
    expect(card).to_be_visible()
    expect(page.locator("header .who")).to_have_text("alice (approver)")
    shot(page, "r3-held-call-on-b")
    card.locator("button.approve").click()
    expect(page.locator("#flash")).to_contain_text("(mfa_required)")
    # Her passkey opens B's window (its own ceremony, on B).
    page.goto(CONSOLE_B + "/console/step-up")
    page.click("#passkey-step-up")
    expect(page.locator("#flash")).to_contain_text("step-up window open for `alice` (passkey `laptop`)")
    page.goto(CONSOLE_B + "/console/approvals")
    page.locator(f'article[data-ticket="{ticket}"] button.approve').click()
    expect(page.locator("#flash")).to_contain_text(f"approved `{ticket}`")
    expect(page.locator(f'article[data-ticket="{ticket}"] .badge')).to_have_text("approved")
    shot(page, "r4-approved-on-b")

    # A reads the approval; the retry on A goes through, once.
    for _ in range(100):
        if ticket_status(ticket) == "approved":
            break
        time.sleep(0.1)
    assert ticket_status(ticket) == "approved", ticket_status(ticket)
    status, answer = transfer(cfg["gateway_a"])
    assert status == 200, answer
    found["retry"] = status
    again = [transfer(cfg["gateway_a"]), transfer(cfg["gateway_b"])]
    for status, answer in again:
        assert status == 403 and answer["error"]["code"] == "approval_required", answer
        assert answer["error"]["ticket"] != ticket, answer
    found["again"] = [s for s, _ in again]

    assert not csp_violations, csp_violations
    browser.close()

print(json.dumps(found))
