"""Independent check of a SPIFFE bundle (JWK set) with pyca/cryptography: every x509-svid key has
no kid, exactly one x5c (standard base64 DER) whose certificate is a CA, and JWK parameters that
match that certificate's public key; spiffe_sequence and spiffe_refresh_hint are integers.
Prints a JSON summary; exits non-zero on the first violation."""

import base64
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64url_int(text):
    padded = text + "=" * (-len(text) % 4)
    return int.from_bytes(base64.urlsafe_b64decode(padded), "big")


def main(path):
    with open(path) as f:
        bundle = json.load(f)
    assert isinstance(bundle["keys"], list), "keys must be a list"
    assert isinstance(bundle["spiffe_sequence"], int), "spiffe_sequence must be an integer"
    assert isinstance(bundle.get("spiffe_refresh_hint", 0), int), "spiffe_refresh_hint must be an integer"
    subjects = []
    for key in bundle["keys"]:
        assert key["use"] == "x509-svid", key
        assert "kid" not in key, "x509-svid keys must not have kid"
        assert len(key["x5c"]) == 1, "exactly one x5c"
        cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0], validate=True))
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert bc.ca, "x5c certificate must be a CA"
        public = cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            assert key["kty"] == "EC"
            assert key["crv"] == {"secp256r1": "P-256", "secp384r1": "P-384"}[public.curve.name]
            numbers = public.public_numbers()
            assert b64url_int(key["x"]) == numbers.x and b64url_int(key["y"]) == numbers.y, "x/y mismatch"
        elif isinstance(public, rsa.RSAPublicKey):
            assert key["kty"] == "RSA"
            numbers = public.public_numbers()
            assert b64url_int(key["n"]) == numbers.n and b64url_int(key["e"]) == numbers.e, "n/e mismatch"
        else:
            raise AssertionError("unsupported key type")
        subjects.append(cert.subject.rfc4514_string())
    print(json.dumps({"ok": True, "keys": len(bundle["keys"]), "subjects": subjects,
                      "sequence": bundle["spiffe_sequence"]}))


if __name__ == "__main__":
    main(sys.argv[1])
