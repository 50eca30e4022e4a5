"""MCP authorization's code flow across the replicas of one cluster, with
the stock client of authorization_code.py (`requests`, and its helpers,
imported rather than copied): the login page opened on replica A, answered
on B, the code redeemed on C and the token used on A; then the single-use
promises across replicas: the page answered again on C, the code redeemed
again on A (which revokes what C issued: its refresh token is refused on
B), and one code redeemed on all replicas at once (one token, no more).

Usage: across_replicas.py CONFIG_JSON: authorization_code.py's config plus
`replicas`, each replica's `base` and `api_url`. Prints one JSON object.
"""

import json
import os
import re
import sys
import threading

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authorization_code import (  # noqa: E402
    CALLBACK,
    Users,
    api,
    authorize_url,
    login,
    pkce,
    query_of,
    register,
    token,
)


def at(cfg, replica):
    """`cfg` with one replica's URLs: the helpers address `base`."""
    return dict(cfg, base=replica["base"], api_url=replica["api_url"])


def redeem(cfg, client_id, code, verifier):
    return token(
        cfg,
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        client_id=client_id,
        code_verifier=verifier,
    )


def main():
    cfg = json.load(open(sys.argv[1]))
    users = Users(cfg["users"], cfg["pool"], cfg["last"])
    a, b, c = (at(cfg, r) for r in cfg["replicas"])
    resource = cfg["api_resource"]
    out = {}
    client_id = register(a, client_name="host across replicas").json()["client_id"]

    # A -> B -> C: the page from A, answered on B, the code redeemed on C.
    verifier, challenge = pkce()
    got = login(b, users, authorize_url(a, client_id, challenge, resource))
    out["answered_on_b"] = got["status"]
    answer = query_of(got["location"])
    out["iss"] = answer.get("iss")
    login_id = re.search(r'name="login" value="([^"]+)"', got["page"]).group(1)
    # The same page answered again, on C: it was taken out on B.
    name, totp = users.next()
    again = requests.post(
        c["base"] + "/oauth2/authorize",
        data={"login": login_id, "user": name, "totp": totp, "decision": "allow"},
        verify=cfg["ca"],
        allow_redirects=False,
    )
    out["answered_again_on_c"] = [again.status_code, again.json().get("code")]
    status, issued = redeem(c, client_id, answer["code"], verifier)
    out["redeemed_on_c"] = status
    out["token_type"] = issued.get("token_type")
    out["api_on_a"] = list(api(a, issued["access_token"])[:2])
    # The code again, on A: refused, and what C issued is revoked.
    status, refused = redeem(a, client_id, answer["code"], verifier)
    out["redeemed_again_on_a"] = [status, refused.get("error")]
    status, refreshed = token(
        b, grant_type="refresh_token", refresh_token=issued["refresh_token"], client_id=client_id
    )
    out["refresh_on_b_after_reuse"] = [status, refreshed.get("error")]

    # One code sent to every replica at once: exactly one token.
    verifier, challenge = pkce()
    got = login(a, users, authorize_url(c, client_id, challenge, resource))
    code = query_of(got["location"])["code"]
    statuses = [None] * 6
    start = threading.Barrier(len(statuses))

    def race(i, replica):
        start.wait()
        statuses[i] = redeem(replica, client_id, code, verifier)[0]

    threads = [threading.Thread(target=race, args=(i, (a, b, c)[i % 3])) for i in range(len(statuses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["race"] = sorted(statuses)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
