"""A real SMTP server for the alert tests (aiosmtpd), on 127.0.0.1, port 0.

Prints `PORT <n>` once listening, then one JSON line per message received:
{"mail_from", "rcpt_tos", "data" (raw), "subject", "from", "to",
"text" (the decoded body), "tls", "auth"}. Options:
  --starttls CERT KEY   offer STARTTLS and require it before anything else
  --implicit CERT KEY   TLS from the first byte (smtps)
  --auth USER PASSWORD  require AUTH with these credentials
  --transient N         answer the first N messages 451 (try again later)
  --reject              answer every message 550 (refused for good)
"""

import argparse
import asyncio
import email
import email.policy
import json
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def main():
    # aiosmtpd warns about its own deprecated attributes on every AUTH.
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser()
    p.add_argument("--starttls", nargs=2)
    p.add_argument("--implicit", nargs=2)
    p.add_argument("--auth", nargs=2)
    p.add_argument("--transient", type=int, default=0)
    p.add_argument("--reject", action="store_true")
    a = p.parse_args()

    state = {"transient": a.transient}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            if a.reject:
                return "550 5.7.1 refused by the test server"
            if state["transient"] > 0:
                state["transient"] -= 1
                return "451 4.3.0 try again later"
            raw = envelope.original_content or envelope.content
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            print(json.dumps({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": raw.decode("utf-8", "replace"),
                "subject": str(msg["subject"]),
                "from": str(msg["from"]),
                "to": str(msg["to"]),
                "text": msg.get_body(("plain",)).get_content(),
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "auth": session.authenticated,
            }), flush=True)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            a.auth is not None
            and isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.auth[0]
            and auth_data.password.decode() == a.auth[1]
        )
        return AuthResult(success=ok)

    def context(pair):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pair[0], pair[1])
        return ctx

    kwargs = {}
    if a.starttls:
        kwargs.update(tls_context=context(a.starttls), require_starttls=True)
    if a.auth:
        kwargs.update(
            authenticator=authenticator,
            auth_required=True,
            # With implicit TLS aiosmtpd does not know the link is encrypted.
            auth_require_tls=not a.implicit,
        )
    server_ssl = context(a.implicit) if a.implicit else None

    async def serve():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            lambda: SMTP(Handler(), hostname="smtp.test", **kwargs),
            "127.0.0.1", 0, ssl=server_ssl,
        )
        print("PORT %d" % srv.sockets[0].getsockname()[1], flush=True)
        # Stop when the test closes our stdin (or dies).
        await loop.run_in_executor(None, sys.stdin.read)
        srv.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
