#!/usr/bin/env python3
"""Tokens signed by an independent JWT library (PyJWT on pyca/cryptography), for tests/jwks.rs.

Usage: pyjwt_tokens.py KID CLAIMS_JSON
Prints one JSON object: {"jwk": <the RSA public key as a JWK with KID>, "rs256": <token>,
"ps256": <token>}, both tokens signed with a fresh 2048-bit RSA key and naming KID.
Needs `python3 -m pip install pyjwt cryptography` (.ci/run installs them).
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def main() -> None:
    kid, claims = sys.argv[1], json.loads(sys.argv[2])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    out = {
        "jwk": jwk,
        "rs256": jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}),
        "ps256": jwt.encode(claims, key, algorithm="PS256", headers={"kid": kid}),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
