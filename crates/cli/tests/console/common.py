"""What the console's browser scripts share (browser.py, passkeys.py): a
fresh TOTP code and a screenshot. Each script's folder is on its import
path, so `from common import fresh_code, shot` finds this file."""

import base64
import hashlib
import hmac
import os
import struct
import time


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
