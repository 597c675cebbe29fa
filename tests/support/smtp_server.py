"""A real SMTP server for the TLS tests: aiosmtpd (PyPI) with TLS and AUTH.

Usage: smtp_server.py <dir> <port> <starttls|tls> <user> <password>

Writes <dir>/ca.pem (a throwaway CA from trustme that signed the server's
certificate for localhost and 127.0.0.1) and delivers to the Maildir <dir>/mail.
`starttls`: STARTTLS is required before anything else; `tls`: implicit TLS (SMTPS).
Either way AUTH (LOGIN/PLAIN, over TLS only) is required before MAIL.
Prints "ready" on stdout once it accepts connections.
"""

import ssl
import sys
import time
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def main() -> None:
    out, port, mode, user, password = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        sys.argv[4].encode(),
        sys.argv[5].encode(),
    )
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user
            and auth_data.password == password
        )
        # handled=False: aiosmtpd answers a failure with 535 itself (the default,
        # handled=True, leaves the client waiting for a reply that never comes).
        return AuthResult(success=ok, handled=False)

    common = dict(
        handler=Mailbox(str(out / "mail")),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    if mode == "tls":
        # The whole connection is TLS, but aiosmtpd only counts STARTTLS as TLS
        # when deciding whether to offer AUTH.
        common["auth_require_tls"] = False
        controller = Controller(ssl_context=context, **common)
    else:
        controller = Controller(tls_context=context, require_starttls=True, **common)
    controller.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
