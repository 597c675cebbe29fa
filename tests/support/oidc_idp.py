"""A real OIDC provider for the tests: oidc-provider-mock (PyPI) served over HTTPS.

Usage: oidc_idp.py <dir> <port>

Writes <dir>/ca.pem (a throwaway CA from trustme that signed the server's
certificate for localhost), then serves the provider at https://localhost:<port>.
Two test-only routes are added on top of the mock's own:
  POST /test/rotate-key  replace the signing key (a JWKS key rotation)
  GET  /test/keys        the current key as PEM (private and public) and its kid,
                         so tests can sign tokens the way the provider does
                         (expired, wrong audience, ...) and forge others.
  GET  /test/jwks-hits   how many times the JWKS (/jwks) has been fetched, so
                         tests count what the provider sees, not spawngate's
                         internals.
Prints "ready" on stdout once it accepts connections.
"""

import ssl
import sys
import threading
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import flask  # noqa: E402
import trustme  # noqa: E402
import werkzeug.serving  # noqa: E402
from authlib import jose  # noqa: E402

import oidc_provider_mock  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    port = int(sys.argv[2])
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)

    app = oidc_provider_mock.app()
    jwks_hits = [0]
    hits_lock = threading.Lock()  # the server is threaded

    @app.before_request
    def count_jwks_hits():
        if flask.request.path == "/jwks":
            with hits_lock:
                jwks_hits[0] += 1

    @app.get("/test/jwks-hits")
    def jwks_hits_route():
        with hits_lock:
            return {"hits": jwks_hits[0]}

    def storage():
        return flask.g.oidc_provider_mock_storage

    @app.post("/test/rotate-key")
    def rotate_key():
        storage().jwk = jose.RSAKey.generate_key(is_private=True)
        return {"kid": storage().jwk.as_dict()["kid"]}

    @app.get("/test/keys")
    def keys():
        jwk = storage().jwk
        return {
            "kid": jwk.as_dict()["kid"],
            "private_pem": jwk.as_pem(is_private=True).decode(),
            "public_pem": jwk.as_pem(is_private=False).decode(),
        }

    server = werkzeug.serving.make_server(
        "127.0.0.1", port, app, threaded=True, ssl_context=context
    )
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
