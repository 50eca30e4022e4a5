"""Passkeys in a real browser: Debian's Chromium driven by Playwright, with
a CDP virtual authenticator (ctap2, internal, resident keys, user
verification). Browsers refuse WebAuthn at an IP address, so the console is
opened at https://localhost:<admin port>. An admin logs in with the admin
token; human admin alice steps up with her TOTP code and registers a
passkey; her window is closed; a held call cannot be approved without
step-up; her passkey opens the window; the call is approved with no code
and the agent's retry goes through. Then, at the API level with the
virtual authenticator's own key: a replayed assertion, one made for
another origin, one without user verification and one whose counter does
not increase are all refused, and a well-made one is accepted (so the
refusals are for what they say). Then alice logs in with her passkey (no
token): refused while she has no admin credential of her name; with one
(role approver) she logs in, discoverably and by name, and sees the
approver's console; another admin's name with her passkey, her
assertion replayed, one for another origin, without user verification or
without the login form's nonce are refused; after her credential is
revoked, her passkey logs nobody in. Called by crates/cli/tests/console.rs with
one JSON argument; writes screenshots to `artefacts`, prints one JSON line.
Any failed check raises (exit status 1)."""

import base64
import hashlib
import json
import os
import ssl
import struct
import sys

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key
from playwright.sync_api import expect, sync_playwright

import common

cfg = json.loads(sys.argv[1])
API = cfg["admin"]  # https://127.0.0.1:<port>, for API calls (the CA's name)
CONSOLE = cfg["console"]  # https://localhost:<port>, for the browser
ART = cfg["artefacts"]
os.makedirs(ART, exist_ok=True)
TIMEOUT = 20_000  # ms, every wait


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def shot(page, name):
    common.shot(page, ART, name)


def transfer(client):
    r = client.post(
        cfg["gateway"] + "/bank/transfer?to=bob&amount=5",
        headers={"content-type": "application/json"},
        content=b'{"memo":"passkey"}',
    )
    return r.status_code, r.json()


found = {}
tls = ssl.create_default_context(cafile=cfg["ca"])
api = httpx.Client(verify=tls, timeout=10, headers={"authorization": "Bearer " + cfg["token"]})
agent_tls = ssl.create_default_context(cafile=cfg["ca"])
agent_tls.load_cert_chain(cfg["payer_cert"], cfg["payer_key"])
payer = httpx.Client(verify=agent_tls, timeout=10)

# A human admin enrols: sensitive actions now need her TOTP or her window.
enrolled = api.post(API + "/admin/v1/admins", json={"name": "alice"})
assert enrolled.status_code == 201, enrolled.text
secret = enrolled.json()["totp_secret"]

with sync_playwright() as p:
    browser, context, page, cdp, authenticator, csp_violations = common.chromium_with_authenticator(
        p, cfg, TIMEOUT
    )

    page.goto(CONSOLE + "/console/login")
    page.fill("input[name=token]", cfg["token"])
    page.click("form.login button[type=submit]")
    page.wait_for_url(CONSOLE + "/console")

    # No window, no passkey yet: a passkey step-up is refused, saying why.
    page.goto(CONSOLE + "/console/step-up")
    expect(page.locator("#step-up-status")).to_have_attribute("data-open", "no")
    expect(page.locator("#passkey-register")).to_have_count(0)
    page.click("#passkey-step-up")
    expect(page.locator("#passkey-status")).to_have_attribute("data-state", "error")
    expect(page.locator("#passkey-status")).to_contain_text("no passkey is registered")
    shot(page, "p1-step-up-page")

    # Alice steps up with her TOTP code, then registers a passkey.
    found["totp_secret"] = secret
    found["totp_step"] = common.step_up_with_totp(page, "alice", secret)
    common.register_passkey(page, "alice", "laptop")
    shot(page, "p2-passkey-registered")
    creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(creds) == 1 and creds[0]["rpId"] == "localhost", creds
    found["registered"] = {"rpId": creds[0]["rpId"], "resident": creds[0]["isResidentCredential"]}

    # Her window closes (the API's step-down, for this admin credential).
    closed = api.delete(API + "/admin/v1/session/step-up")
    assert closed.status_code == 200 and closed.json()["step_up"] is None, closed.text
    page.goto(CONSOLE + "/console/step-up")
    expect(page.locator("#step-up-status")).to_have_attribute("data-open", "no")

    # A held call: approving it without step-up is refused.
    status, answer = transfer(payer)
    assert status == 403 and answer["error"]["code"] == "approval_required", answer
    ticket = answer["error"]["ticket"]
    found["ticket"] = ticket
    page.goto(CONSOLE + "/console/approvals")
    card = page.locator(f'article[data-ticket="{ticket}"]')
    expect(card).to_be_visible()
    card.locator("button.approve").click()
    expect(page.locator("#flash")).to_contain_text("(mfa_required)")
    expect(page.locator(f'article[data-ticket="{ticket}"] .badge')).to_have_text("pending")

    # Her passkey opens the window; the browser's answer is kept for the
    # replay below.
    page.goto(CONSOLE + "/console/step-up")
    with page.expect_request(lambda r: r.url.endswith("/console/passkeys/step-up") and r.method == "POST") as sent:
        page.click("#passkey-step-up")
    expect(page.locator("#flash")).to_contain_text("step-up window open for `alice` (passkey `laptop`)")
    expect(page.locator("#step-up-status")).to_have_attribute("data-open", "yes")
    expect(page.locator("#step-up-status .user")).to_have_text("alice")
    shot(page, "p3-passkey-step-up")
    browser_answer = sent.value.post_data

    # The call is approved with no code: the window stands in for one.
    page.goto(CONSOLE + "/console/approvals")
    page.locator(f'article[data-ticket="{ticket}"] button.approve').click()
    expect(page.locator("#flash")).to_contain_text(f"approved `{ticket}`")
    expect(page.locator(f'article[data-ticket="{ticket}"] .badge')).to_have_text("approved")
    shot(page, "p4-approved-with-passkey")
    status, answer = transfer(payer)
    assert status == 200, answer

    # --- At the API level -------------------------------------------------
    csrf = page.locator("header .logout input[name=csrf]").get_attribute("value")
    finish = CONSOLE + "/console/passkeys/step-up"

    def post_answer(form):
        r = context.request.post(finish, form=form, max_redirects=0)
        return r.status, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text()

    # The browser's own answer, replayed: its challenge was spent.
    replay_form = dict(httpx.QueryParams(browser_answer))
    status, body = post_answer(replay_form)
    assert status == 401 and body["error"]["code"] == "invalid_credential", (status, body)
    assert "already used" in body["error"]["message"], body
    found["replay"] = status

    cred = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]
    key = load_der_private_key(base64.b64decode(cred["privateKey"]), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), type(key)
    cred_id = b64u(base64.b64decode(cred["credentialId"]))
    found["sign_count"] = cred["signCount"]

    def forged(origin, count, flags=0x05):
        """An assertion made with the authenticator's own key for a fresh
        challenge of this session."""
        options = context.request.post(CONSOLE + "/console/passkeys/step-up/options", form={"csrf": csrf})
        assert options.status == 200, options.text()
        challenge = options.json()["publicKey"]["challenge"]
        client = json.dumps(
            {"type": "webauthn.get", "challenge": challenge, "origin": origin, "crossOrigin": False}
        ).encode()
        data = hashlib.sha256(b"localhost").digest() + bytes([flags]) + struct.pack(">I", count)
        sig = key.sign(data + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256()))
        credential = {
            "id": cred_id,
            "type": "public-key",
            "clientDataJSON": b64u(client),
            "authenticatorData": b64u(data),
            "signature": b64u(sig),
        }
        return {"csrf": csrf, "credential": json.dumps(credential)}

    refusals = {}
    for name, form, says in [
        ("wrong_origin", forged("https://evil.example", cred["signCount"] + 10), "origin"),
        ("other_port", forged("https://localhost:1", cred["signCount"] + 10), "origin"),
        ("no_user_verification", forged(CONSOLE, cred["signCount"] + 10, flags=0x01), "verify the user"),
    ] + (
        # A counter that stands still (both zero is how counter-less
        # passkeys work, and is accepted).
        [("counter_stands_still", forged(CONSOLE, cred["signCount"]), "counter")]
        if cred["signCount"] > 0
        else []
    ):
        status, body = post_answer(form)
        assert status == 401 and body["error"]["code"] == "invalid_credential", (name, status, body)
        assert says in body["error"]["message"], (name, body)
        refusals[name] = body["error"]["message"]
    found["refused"] = refusals
    # Made right, the same forgery is accepted: the refusals above are for
    # the origin, the flag and the counter, not for the forging.
    status, body = post_answer(forged(CONSOLE, cred["signCount"] + 10))
    assert status == 200 and body["user"] == "alice", (status, body)

    # --- Logging in with the passkey (no token) ----------------------------
    # The forgery above moved the stored counter past the authenticator's:
    # the authenticator's counter is moved past it too (the same key), or
    # its next assertion would be refused as a clone's.
    cdp.send("WebAuthn.removeCredential", {"authenticatorId": authenticator, "credentialId": cred["credentialId"]})
    moved = {k: cred[k] for k in ("credentialId", "isResidentCredential", "rpId", "privateKey", "userHandle") if k in cred}
    moved["signCount"] = cred["signCount"] + 50
    cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": moved})

    def passkey_login(name=""):
        return common.passkey_login(page, CONSOLE, name)

    page.click("header .logout button")
    page.wait_for_url(CONSOLE + "/console/login")
    # Alice has a passkey but no admin credential of her name: no role.
    passkey_login()
    expect(page.locator("#passkey-status")).to_have_attribute("data-state", "error")
    expect(page.locator("#passkey-status")).to_contain_text("no live admin credential")
    shot(page, "p5-passkey-login-no-role")
    # An owner gives her one (the API token's step-up window, which her
    # passkey opened above, stands in for a code).
    made = api.post(API + "/admin/v1/admin-tokens", json={"name": "alice", "role": "approver"})
    assert made.status_code == 201, made.text
    # Discoverable: no name typed, the authenticator offers her passkey.
    login_answer = passkey_login()
    page.wait_for_url(CONSOLE + "/console")
    expect(page.locator("header .who")).to_have_text("alice (approver)")
    page.goto(CONSOLE + "/console/agents")
    expect(page.locator("form[action$='/revoke']")).to_have_count(0)
    shot(page, "p6-passkey-login")
    found["login"] = page.locator("header .who").inner_text()
    page.click("header .logout button")
    page.wait_for_url(CONSOLE + "/console/login")
    # By name.
    passkey_login("alice")
    page.wait_for_url(CONSOLE + "/console")
    expect(page.locator("header .who")).to_have_text("alice (approver)")
    page.click("header .logout button")
    page.wait_for_url(CONSOLE + "/console/login")
    # Another admin's name with her passkey: refused.
    passkey_login("bob")
    expect(page.locator("#passkey-status")).to_contain_text("not the named admin")

    # At the API level: the login's own checks.
    page.goto(CONSOLE + "/console/login")
    nonce = page.locator("form.login input[name=login_nonce]").get_attribute("value")
    login_url = CONSOLE + "/console/login/passkey"

    def post_login(form):
        r = context.request.post(login_url, form=form, max_redirects=0)
        return r.status, r.json()

    def forged_login(origin, count, flags=0x05, form_nonce=None):
        options = context.request.post(CONSOLE + "/console/login/passkey/options", form={"login_nonce": nonce})
        assert options.status == 200, options.text()
        challenge = options.json()["publicKey"]["challenge"]
        client = json.dumps(
            {"type": "webauthn.get", "challenge": challenge, "origin": origin, "crossOrigin": False}
        ).encode()
        data = hashlib.sha256(b"localhost").digest() + bytes([flags]) + struct.pack(">I", count)
        sig = key.sign(data + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256()))
        credential = {
            "id": cred_id,
            "type": "public-key",
            "clientDataJSON": b64u(client),
            "authenticatorData": b64u(data),
            "signature": b64u(sig),
        }
        return {"login_nonce": form_nonce or nonce, "credential": json.dumps(credential)}

    count = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]["signCount"]
    count = max(count, 100) + 100
    login_refusals = {}
    replayed = dict(httpx.QueryParams(login_answer))
    replayed["login_nonce"] = nonce
    status, body = post_login(replayed)
    assert status == 401 and "already used" in body["error"]["message"], (status, body)
    login_refusals["replay"] = body["error"]["message"]
    for name, form, says in [
        ("wrong_origin", forged_login("https://evil.example", count), "origin"),
        ("no_user_verification", forged_login(CONSOLE, count, flags=0x01), "verify the user"),
        ("counter_goes_back", forged_login(CONSOLE, 1), "counter"),
    ]:
        status, body = post_login(form)
        assert status == 401 and body["error"]["code"] == "invalid_credential", (name, status, body)
        assert says in body["error"]["message"], (name, body)
        login_refusals[name] = body["error"]["message"]
    # Without the login form's nonce (another browser's form): refused
    # before anything is checked.
    status, body = post_login(forged_login(CONSOLE, count, form_nonce="f" * 64))
    assert status == 403 and body["error"]["code"] == "forbidden", (status, body)
    found["login_refused"] = login_refusals
    # Made right, accepted: a session cookie for alice.
    status, body = post_login(forged_login(CONSOLE, count + 1))
    assert status == 200 and body["admin"] == "alice", (status, body)

    # Her credential revoked: her passkey logs nobody in.
    revoked = api.post(API + "/admin/v1/admin-tokens/alice/revoke", json={})
    assert revoked.status_code == 200, revoked.text
    # (The accepted login spent the form's nonce: a fresh login page.)
    page.goto(CONSOLE + "/console/login")
    nonce = page.locator("form.login input[name=login_nonce]").get_attribute("value")
    status, body = post_login(forged_login(CONSOLE, count + 2))
    assert status == 403 and "no live admin credential" in body["error"]["message"], (status, body)

    assert not csp_violations, csp_violations
    browser.close()

print(json.dumps(found))
