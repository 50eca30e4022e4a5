"""Drives the web console in a real browser (Debian's Chromium through
Playwright): log in, check the CSP and the session cookie, check that a form
without a CSRF token is refused, revoke an agent, enrol a human admin, watch a
held call appear in the approvals queue, see approving it refused without
step-up, approve it with her fresh TOTP code, watch the agent's retry go
through in the live view, check an audit inclusion proof, log out; then log
in as an auditor, see no form to act with, and have a forged form (with the
auditor session's valid CSRF token) refused. Called by
crates/cli/tests/console.rs with one JSON argument; writes screenshots to its
`artefacts` directory and prints one JSON line of findings. Any failed check
raises (exit status 1)."""

import json
import os
import ssl
import sys

import httpx
from playwright.sync_api import expect, sync_playwright

import common
from common import fresh_code

cfg = json.loads(sys.argv[1])
ADMIN = cfg["admin"]
ART = cfg["artefacts"]
os.makedirs(ART, exist_ok=True)
TIMEOUT = 20_000  # ms, every wait


def agent_client(cert, key):
    tls = ssl.create_default_context(cafile=cfg["ca"])
    tls.load_cert_chain(cert, key)
    return httpx.Client(verify=tls, timeout=10)


def transfer(client):
    r = client.post(
        cfg["gateway"] + "/bank/transfer?to=alice&amount=10",
        headers={"content-type": "application/json"},
        content=b'{"memo":"rent"}',
    )
    return r.status_code, r.json(), r.headers.get("x-request-id")


def shot(page, name):
    common.shot(page, ART, name)


found = {}
csp_violations = []
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=cfg["chromium"],
        # Root in a container: Chromium's sandbox needs user namespaces.
        args=["--no-sandbox", "--disable-dev-shm-usage"],
    )
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    page.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: d.accept())

    # Not logged in: the login page.
    response = page.goto(ADMIN + "/console")
    assert page.url.endswith("/console/login"), page.url
    shot(page, "01-login")

    # A wrong token is refused.
    page.fill("input[name=token]", "pcadm_" + "0" * 64)
    page.click("form.login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not a valid admin token")

    # Log in with the admin token.
    page.fill("input[name=token]", cfg["token"])
    page.click("form.login button[type=submit]")
    page.wait_for_url(ADMIN + "/console")
    cookie = [c for c in context.cookies() if c["name"] == "__Host-portcullis-console"]
    assert cookie, context.cookies()
    cookie = cookie[0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
    found["cookie"] = {k: cookie[k] for k in ("httpOnly", "secure", "sameSite", "path")}

    # The CSP: this origin's scripts only, no inline script or style.
    response = page.goto(ADMIN + "/console")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp, csp
    found["csp"] = csp
    expect(page.locator("#live-status")).to_have_attribute("data-live", "on")
    shot(page, "02-overview")

    # A second tab watches the live decisions.
    live = context.new_page()
    live.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
    live.goto(ADMIN + "/console")
    expect(live.locator("#live-status")).to_have_attribute("data-live", "on")

    # A form without its CSRF token is refused, and nothing happens.
    no_token = context.request.post(ADMIN + f"/console/agents/{cfg['victim']}/revoke", form={})
    assert no_token.status == 403 and "CSRF" in no_token.text(), (no_token.status, no_token.text())
    wrong = context.request.post(
        ADMIN + f"/console/agents/{cfg['victim']}/revoke", form={"csrf": "0" * 64}
    )
    assert wrong.status == 403, wrong.status
    found["csrf_refused"] = [no_token.status, wrong.status]

    # Revoke an agent from the agents page (no admin has enrolled yet: the
    # admin token alone may, as in the API).
    page.goto(ADMIN + "/console/agents")
    victim_row = page.locator("#agents tbody tr", has=page.locator(".agent-name", has_text=cfg["victim"]))
    expect(victim_row.locator(".status")).to_have_text("active")
    shot(page, "06-agents")
    victim_row.locator("button", has_text="Revoke").click()
    expect(page.locator("#flash")).to_contain_text(f"agent `{cfg['victim']}` revoked")
    expect(victim_row.locator(".status")).to_have_text("revoked")
    shot(page, "07-revoked")

    # Now a human admin enrols: deciding needs her fresh TOTP code (step-up).
    with httpx.Client(verify=ssl.create_default_context(cafile=cfg["ca"]), timeout=10) as api:
        enrolled = api.post(
            ADMIN + "/admin/v1/admins",
            headers={"authorization": "Bearer " + cfg["token"]},
            json={"name": "alice"},
        )
        assert enrolled.status_code in (200, 201), enrolled.text
        secret = enrolled.json()["totp_secret"]

    # The held call appears in the approvals queue by itself.
    page.goto(ADMIN + "/console/approvals")
    payer = agent_client(cfg["payer_cert"], cfg["payer_key"])
    status, answer, _ = transfer(payer)
    assert status == 403 and answer["error"]["code"] == "approval_required", answer
    ticket = answer["error"]["ticket"]
    found["ticket"] = ticket
    card = page.locator(f'article[data-ticket="{ticket}"]')
    expect(card).to_be_visible()
    # The exact call: path, query and body preview.
    expect(card.locator(".query")).to_have_text("to=alice&amount=10")
    expect(card.locator(".preview")).to_have_text('{"memo":"rent"}')
    expect(card.locator(".badge")).to_have_text("pending")
    shot(page, "03-approval-held")

    # Approving without the step-up code is refused by the API's own check.
    card.locator("button.approve").click()
    expect(page.locator("#flash")).to_contain_text("(mfa_required)")
    expect(page.locator(f'article[data-ticket="{ticket}"] .badge')).to_have_text("pending")
    shot(page, "04a-step-up-required")

    # With alice's fresh code it is approved.
    approve_form = page.locator(f'article[data-ticket="{ticket}"] form', has=page.locator("button.approve"))
    approve_form.locator("input[name=user]").fill("alice")
    approve_form.locator("input[name=totp]").fill(fresh_code(secret))
    approve_form.locator("button.approve").click()
    expect(page.locator("#flash")).to_contain_text(f"approved `{ticket}`")
    expect(page.locator(f'article[data-ticket="{ticket}"] .badge')).to_have_text("approved")
    shot(page, "04-approved")

    # The agent's retry goes through, and the live view shows it.
    status, answer, request_id = transfer(payer)
    assert status == 200, answer
    found["retry_request_id"] = request_id
    row = live.locator("#live tbody tr", has_text=request_id)
    expect(row).to_be_visible()
    expect(row.locator(".outcome")).to_have_text("allow")
    shot(live, "05-live-allow")

    # The other pages render.
    for name, path, selector in [
        ("08-alerts", "/console/alerts", "h1"),
        ("09-policies", "/console/policies", "#versions"),
        ("10-policy-diff", "/console/policies/1", "pre.diff"),
        ("11-tools", "/console/tools", "h1"),
        ("12-inventory", "/console/inventory", "#flow-graph"),
    ]:
        page.goto(ADMIN + path)
        expect(page.locator(selector).first).to_be_visible()
        shot(page, name)
    # Explain and what-if, through the policies pages.
    page.goto(ADMIN + "/console/policies")
    page.fill("form.explain input[name=agent]", "pay-bot")
    page.fill("form.explain input[name=action]", "POST")
    page.fill("form.explain input[name=resource]", "bank")
    page.click("form.explain button")
    expect(page.locator("#explain-decision")).to_contain_text("allow")
    shot(page, "14-explain")
    page.goto(ADMIN + "/console/policies/1")
    page.click("form[action='/console/policies/1/whatif'] button")
    expect(page.locator("#whatif-report")).to_be_visible()
    shot(page, "15-whatif")
    page.goto(ADMIN + "/console/audit?id=" + request_id)
    expect(page.locator("#proof-status")).to_contain_text("verified: record is leaf")
    shot(page, "13-audit-proof")

    # Log out: the session is gone.
    page.click("header .logout button")
    page.wait_for_url(ADMIN + "/console/login")
    page.goto(ADMIN + "/console")
    assert page.url.endswith("/console/login"), page.url
    after = context.request.get(ADMIN + "/console/agents", max_redirects=0)
    assert after.status == 303, after.status

    # An auditor sees every page but no way to act, and a forged form (with
    # her own session's valid CSRF token) is refused.
    auditor = browser.new_context(ignore_https_errors=True)
    auditor.set_default_timeout(TIMEOUT)
    ap = auditor.new_page()
    ap.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
    ap.goto(ADMIN + "/console/login")
    ap.fill("input[name=token]", cfg["auditor_token"])
    ap.click("form.login button[type=submit]")
    ap.wait_for_url(ADMIN + "/console")
    expect(ap.locator("header .who")).to_contain_text(cfg["auditor_name"])
    ap.goto(ADMIN + "/console/agents")
    payer_row = ap.locator("#agents tbody tr", has=ap.locator(".agent-name", has_text="pay-bot"))
    expect(payer_row.locator(".status")).to_have_text("active")
    expect(ap.locator("#agents form")).to_have_count(0)
    expect(ap.locator("#agents button")).to_have_count(0)
    shot(ap, "16-auditor-agents")
    status, answer, _ = transfer(payer)
    assert status == 403 and answer["error"]["code"] == "approval_required", answer
    held = answer["error"]["ticket"]
    found["auditor_ticket"] = held
    ap.goto(ADMIN + "/console/approvals")
    card = ap.locator(f'article[data-ticket="{held}"]')
    expect(card).to_be_visible()
    expect(card.locator(".badge")).to_have_text("pending")
    expect(card.locator("form")).to_have_count(0)
    expect(card.locator("button")).to_have_count(0)
    expect(card.locator(".read-only")).to_be_visible()
    shot(ap, "17-auditor-approvals")
    csrf = ap.locator("header .logout input[name=csrf]").get_attribute("value")
    assert csrf and len(csrf) == 64, csrf
    forged = {}
    for path in ["/console/agents/pay-bot/revoke", f"/console/approvals/{held}/approve"]:
        r = auditor.request.post(ADMIN + path, form={"csrf": csrf}, max_redirects=0)
        assert r.status == 403, (path, r.status, r.text())
        assert 'data-code="forbidden"' in r.text(), r.text()
        forged[path] = r.status
    # The same forged form, submitted by the browser itself.
    ap.goto(ADMIN + "/console/agents")
    with ap.expect_response(lambda r: r.url.endswith("/console/agents/pay-bot/revoke")) as answer_info:
        ap.evaluate(
            """csrf => {
                const f = document.createElement('form');
                f.method = 'post';
                f.action = '/console/agents/pay-bot/revoke';
                const i = document.createElement('input');
                i.name = 'csrf';
                i.value = csrf;
                f.appendChild(i);
                document.body.appendChild(f);
                f.submit();
            }""",
            csrf,
        )
    assert answer_info.value.status == 403, answer_info.value.status
    expect(ap.locator("#refusal")).to_have_attribute("data-code", "forbidden")
    shot(ap, "18-auditor-forged-refused")
    ap.goto(ADMIN + "/console/agents")
    expect(payer_row.locator(".status")).to_have_text("active")
    ap.goto(ADMIN + "/console/approvals")
    expect(ap.locator(f'article[data-ticket="{held}"] .badge')).to_have_text("pending")
    found["auditor_forged"] = forged

    assert not csp_violations, csp_violations
    browser.close()

print(json.dumps(found))
