#!/usr/bin/python3
"""A third-party EWS client (exchangelib, Debian's python3-exchangelib) reading an Inbox.

Connects to an EWS endpoint with Basic auth and no autodiscover, reads the
Inbox unread count and the newest messages, and prints one JSON object:

    {"unread": 2, "messages": [{"subject": "...", "from": "a@b", "fromName": "A"}]}

Usage:
    exchangelib_client.py [--url URL] [--user ADDR] [--password PW]
                          [--count N] [--header NAME=VALUE]... [--debug]

--url, --user and --password default to $EWS_URL, $EWS_USER and $EWS_PASSWORD
(so the password need not appear in the process list). --header adds an HTTP
header to every request exchangelib sends (a proxy identifies devices by one).
Errors go to stderr, one line, with exit status 1 (2 for bad usage).
For HTTPS with a private CA, set REQUESTS_CA_BUNDLE to its PEM file.

Run it with /usr/bin/python3: the package lives in Debian's dist-packages.
"""

import argparse
import json
import logging
import os
import sys

import requests.adapters

from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials
from exchangelib.protocol import BaseProtocol


def parse_args():
    p = argparse.ArgumentParser(description="Read an Inbox over EWS with exchangelib.")
    p.add_argument("--url", default=os.environ.get("EWS_URL"), help="EWS URL (default $EWS_URL)")
    p.add_argument("--user", default=os.environ.get("EWS_USER"), help="SMTP address (default $EWS_USER)")
    p.add_argument("--password", default=os.environ.get("EWS_PASSWORD"), help="password (default $EWS_PASSWORD)")
    p.add_argument("--count", type=int, default=10, help="how many of the newest messages to list (default 10)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="extra HTTP header for every request; repeatable")
    p.add_argument("--debug", action="store_true",
                   help="log exchangelib's requests and responses to stderr (credentials included)")
    args = p.parse_args()
    for name in ("url", "user", "password"):
        if not getattr(args, name):
            p.error(f"--{name} (or $EWS_{name.upper()}) is required")
    if args.count < 1:
        p.error("--count must be at least 1")
    headers = {}
    for h in args.header:
        name, sep, value = h.partition("=")
        if not sep or not name.strip():
            p.error(f"--header {h!r}: want NAME=VALUE")
        headers[name.strip()] = value
    args.header = headers
    return args


def header_adapter(headers):
    """An HTTPAdapter class that adds headers to every request.

    exchangelib builds each session itself (BaseProtocol.raw_session), so there
    is no session object to configure; its documented hook is
    BaseProtocol.HTTP_ADAPTER_CLS, and requests calls HTTPAdapter.add_headers
    for every request the adapter sends.
    """

    class HeaderAdapter(requests.adapters.HTTPAdapter):
        def add_headers(self, request, **kwargs):
            super().add_headers(request, **kwargs)
            request.headers.update(headers)

    return HeaderAdapter


def main():
    args = parse_args()
    # exchangelib logs a multi-line dump of the failed request (headers
    # included) as an error before raising; without --debug the one-line
    # message printed below says enough.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL, stream=sys.stderr)
    if args.header:
        BaseProtocol.HTTP_ADAPTER_CLS = header_adapter(args.header)
    # No version given: exchangelib detects it with a ConvertId request and
    # reads ServerVersionInfo from the SOAP header, as against real Exchange.
    config = Configuration(
        service_endpoint=args.url,
        credentials=Credentials(username=args.user, password=args.password),
        auth_type=BASIC,
    )
    account = Account(primary_smtp_address=args.user, config=config, autodiscover=False, access_type=DELEGATE)
    inbox = account.inbox
    messages = [
        {
            "subject": m.subject,
            "from": m.author.email_address if m.author else None,
            "fromName": m.author.name if m.author else None,
        }
        for m in inbox.all().order_by("-datetime_received")[: args.count]
    ]
    json.dump({"unread": inbox.unread_count, "messages": messages}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one clear line for the caller, not a traceback
        print(f"exchangelib_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
