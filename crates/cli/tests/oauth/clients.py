"""Stock OAuth libraries against the gateway's token endpoint, with their
defaults unchanged (only the key and its algorithm are chosen; keys are
joserfc's, which authlib >= 1.7 signs with): authlib's
`PrivateKeyJWT` (1 h assertions) and OAuth2Session, requests-oauthlib's
`BackendApplicationClient` (HTTP Basic with the client id and an empty
secret), assertions with an `aud` array and the `Ed25519` algorithm name
(each an hour long, refused when replayed), RFC 8414 metadata validation, RFC 6749 §5.2 errors as the libraries
parse them, and DPoP proofs signed ES256 and `Ed25519` (RFC 9864) with a
server-issued nonce.

Usage: clients.py CONFIG_JSON. Prints one JSON object of results.
"""

import base64
import hashlib
import json
import sys
import time
import uuid

import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from requests_oauthlib import OAuth2Session as OauthlibSession

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    ca, token_url, api = cfg["ca"], cfg["token_url"], cfg["api_url"]
    es, ed = cfg["es"], cfg["ed"]
    out = {}

    # RFC 8414 metadata, validated by authlib.
    meta = requests.get(cfg["metadata_url"], verify=ca).json()
    try:
        AuthorizationServerMetadata(meta).validate()
        out["metadata"] = "valid"
    except ValueError as e:
        out["metadata"] = str(e)
    out["metadata_algs"] = meta.get("token_endpoint_auth_signing_alg_values_supported")
    out["response_types"] = meta.get("response_types_supported")
    out["pkce_methods"] = meta.get("code_challenge_methods_supported")

    # A P-256 key for the ES256 agent, registered through the admin API.
    ec_key = ECKey.generate_key("P-256", private=True)
    public = ec_key.as_dict(private=False)
    r = requests.post(
        f"{cfg['admin_url']}/admin/v1/agents/{es['name']}/keys",
        json={"jwk": public},
        headers={"authorization": f"Bearer {cfg['admin_token']}"},
        verify=ca,
    )
    out["register_es256"] = r.status_code

    # authlib: private_key_jwt with its defaults (exp = iat + 3600, `aud` the
    # token endpoint), ES256 and EdDSA; the token is bound to the client
    # certificate of the connection, so it is used as a Bearer token there.
    for label, agent, key, alg in [
        ("authlib_es256", es, ec_key, "ES256"),
        ("authlib_eddsa", ed, OKPKey.import_key(ed["jwk"]), "EdDSA"),
    ]:
        session = AuthlibSession(
            agent["name"],
            key,
            token_endpoint_auth_method=PrivateKeyJWT(token_url, alg=alg),
        )
        # `verify` per call: requests lets REQUESTS_CA_BUNDLE override a
        # session's `verify`.
        tls = {"cert": (agent["cert"], agent["key"]), "verify": ca}
        token = session.fetch_token(token_url, grant_type="client_credentials", **tls)
        out[label] = {
            "token_type": token["token_type"],
            "expires_in": token["expires_in"],
            "api": session.get(api, **tls).status_code,
        }

    # authlib parses RFC 6749 errors: an assertion for another client.
    bad = AuthlibSession(
        es["name"],
        OKPKey.import_key(ed["jwk"]),
        token_endpoint_auth_method=PrivateKeyJWT(token_url, alg="EdDSA"),
    )
    try:
        bad.fetch_token(
            token_url, grant_type="client_credentials", cert=(es["cert"], es["key"]), verify=ca
        )
        out["authlib_error"] = "issued"
    except Exception as e:  # authlib's OAuthError
        out["authlib_error"] = getattr(e, "error", repr(e))

    # requests-oauthlib: the client credentials grant with its default client
    # authentication (HTTP Basic, client id and empty secret) and the
    # assertion as extra parameters.
    session = OauthlibSession(client=BackendApplicationClient(client_id=es["name"]))
    assertion = private_key_jwt_sign(ec_key, es["name"], token_url, alg="ES256")
    token = session.fetch_token(
        token_url,
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=assertion.decode() if isinstance(assertion, bytes) else assertion,
        cert=(es["cert"], es["key"]),
        verify=ca,
    )
    out["oauthlib"] = {
        "token_type": token["token_type"],
        "api": session.get(api, cert=(es["cert"], es["key"]), verify=ca).status_code,
    }
    try:
        session.fetch_token(
            token_url,
            client_assertion_type=ASSERTION_TYPE,
            client_assertion="not.a.jwt",
            cert=(es["cert"], es["key"]),
            verify=ca,
        )
        out["oauthlib_error"] = "issued"
    except OAuth2Error as e:
        out["oauthlib_error"] = e.error

    # Assertions shaped as other libraries shape them, signed with joserfc
    # and `cryptography`: `aud` an array (the issuer and the token
    # endpoint), and EdDSA under its RFC 9864 name `Ed25519`; each lives an
    # hour, and the same one presented again is refused (its `jti` is kept
    # until it expires).
    def assertion_claims(name):
        now = int(time.time())
        return {"iss": name, "sub": name, "aud": [meta["issuer"], token_url],
                "iat": now, "exp": now + 3600, "jti": str(uuid.uuid4())}

    def post_assertion(agent, assertion):
        r = requests.post(
            token_url,
            data={"grant_type": "client_credentials",
                  "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion},
            cert=(agent["cert"], agent["key"]),
            verify=ca,
        )
        return [r.status_code, r.json().get("error") or r.json().get("token_type")]

    aud_array = jwt.encode({"alg": "ES256", "typ": "JWT"}, assertion_claims(es["name"]),
                           ec_key, algorithms=["ES256"])
    out["aud_array"] = post_assertion(es, aud_array)
    out["replayed"] = post_assertion(es, aud_array)
    ed_private = Ed25519PrivateKey.from_private_bytes(
        base64.urlsafe_b64decode(ed["jwk"]["d"] + "=" * (-len(ed["jwk"]["d"]) % 4)))
    header = {"alg": "Ed25519", "typ": "JWT"}
    signing_input = (b64(json.dumps(header).encode()) + "."
                     + b64(json.dumps(assertion_claims(ed["name"])).encode()))
    out["ed25519_named"] = post_assertion(
        ed, signing_input + "." + b64(ed_private.sign(signing_input.encode())))

    # DPoP (RFC 9449) without a client certificate: ES256 proofs (authlib's
    # JWS) and `Ed25519`-named ones (RFC 9864), each with the nonce the
    # gateway hands out.
    def es256_proof(htm, htu, token=None, nonce=None):
        claims = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token:
            claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
        if nonce:
            claims["nonce"] = nonce
        header = {"alg": "ES256", "typ": "dpop+jwt", "jwk": public}
        return jwt.encode(header, claims, ec_key, algorithms=["ES256"])

    ed_dpop = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    ed_x = ed_dpop.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    def ed25519_proof(htm, htu, token=None, nonce=None):
        claims = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token:
            claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
        if nonce:
            claims["nonce"] = nonce
        header = {"alg": "Ed25519", "typ": "dpop+jwt",
                  "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(ed_x)}}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        return signing_input + "." + b64(ed_dpop.sign(signing_input.encode()))

    for label, proof in [("dpop_es256", es256_proof), ("dpop_ed25519", ed25519_proof)]:
        assertion = private_key_jwt_sign(ec_key, es["name"], token_url, alg="ES256")
        if isinstance(assertion, bytes):
            assertion = assertion.decode()
        r = requests.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
            headers={"DPoP": proof("POST", token_url)},
            verify=ca,
        )
        body = r.json()
        nonce = r.headers.get("DPoP-Nonce")
        token = body.get("access_token")
        result = {"token": r.status_code, "token_type": body.get("token_type"), "nonce": bool(nonce)}
        if token:
            ok = requests.get(
                api,
                headers={"Authorization": f"DPoP {token}",
                         "DPoP": proof("GET", api, token, nonce)},
                verify=ca,
            )
            result["api"] = ok.status_code
            stale = requests.get(
                api,
                headers={"Authorization": f"DPoP {token}",
                         "DPoP": proof("GET", api, token, "0." + "A" * 24)},
                verify=ca,
            )
            result["stale_nonce"] = stale.status_code
            result["stale_challenge"] = stale.headers.get("WWW-Authenticate", "")
            result["stale_new_nonce"] = bool(stale.headers.get("DPoP-Nonce"))
        out[label] = result

    print(json.dumps(out))


if __name__ == "__main__":
    main()
