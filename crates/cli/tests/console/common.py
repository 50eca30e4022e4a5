"""What the console's browser scripts share (browser.py, passkeys.py,
replicas.py): a fresh TOTP code, a screenshot, and Chromium with a virtual
passkey authenticator. Each script's folder is on its import
path, so `from common import fresh_code, shot` finds this file."""

import base64
import hashlib
import hmac
import os
import struct
import time

from playwright.sync_api import expect


def fresh_code(secret_b32):
    """RFC 6238 (SHA-1, 6 digits, 30 s), in a step with time left: a code
    is accepted once, and must not expire on its way."""
    while time.time() % 30 > 22:
        time.sleep(0.2)
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def shot(page, directory, name):
    """A full-page screenshot `<directory>/<name>.png`."""
    page.screenshot(path=os.path.join(directory, name + ".png"), full_page=True)


def chromium_with_authenticator(p, cfg, timeout_ms):
    """Debian's Chromium (`cfg["chromium"]`) with one page whose CSP
    violations are collected, dialogs accepted, and a CDP virtual
    authenticator (ctap2, internal, resident keys, user verification):
    (browser, context, page, cdp, authenticator id, CSP violations)."""
    browser = p.chromium.launch(
        executable_path=cfg["chromium"],
        args=["--no-sandbox", "--disable-dev-shm-usage"],
    )
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: d.accept())
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )["authenticatorId"]
    return browser, context, page, cdp, authenticator, violations


def step_up_with_totp(page, user, secret):
    """On the step-up page: opens `user`'s window with a fresh code of
    `secret`; answers the code's time step (spent now)."""
    page.fill("form.step-up-totp input[name=user]", user)
    page.fill("form.step-up-totp input[name=totp]", fresh_code(secret))
    step = int(time.time()) // 30
    page.click("form.step-up-totp button")
    expect(page.locator("#flash")).to_contain_text(f"step-up window open for `{user}`")
    expect(page.locator("#step-up-status")).to_have_attribute("data-open", "yes")
    return step


def register_passkey(page, user, label):
    """On the step-up page, in `user`'s open window: registers a passkey of
    the virtual authenticator as `label`."""
    page.fill("#passkey-label", label)
    page.click("#passkey-register")
    expect(page.locator("#flash")).to_contain_text(f"passkey `{label}` registered for `{user}`")
    expect(page.locator("#passkeys .label")).to_have_text(label)


def passkey_login(page, console, name=""):
    """Starts a passkey login on `console`'s login page (for the named admin,
    or discoverable); answers the browser's answer as posted."""
    page.goto(console + "/console/login")
    page.fill("#passkey-admin", name)
    with page.expect_request(lambda r: r.url.endswith("/console/login/passkey") and r.method == "POST") as sent:
        page.click("#passkey-login")
    return sent.value.post_data
