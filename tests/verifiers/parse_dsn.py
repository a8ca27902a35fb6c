#!/usr/bin/env python3
"""Reads delivery status notifications with Python's email package.

Usage: parse_dsn.py FILE...

Prints one JSON object per file: the report's content type and
report-type, the per-message fields of the message/delivery-status part
(Original-Envelope-Id, Reporting-MTA), each recipient's fields
(Action, Status, Final-Recipient, Original-Recipient), and the content
type of the returned message part with whether the original body is in it.
"""
import email
import email.policy
import json
import sys


def describe(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.compat32)
    out = {
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [p.get_content_type() for p in msg.get_payload()],
    }
    status = next(p for p in msg.get_payload() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    per_message = blocks[0]
    out["envid"] = per_message.get("Original-Envelope-Id")
    out["reporting_mta"] = per_message.get("Reporting-MTA")
    out["recipients"] = [
        {
            "action": b.get("Action"),
            "status": b.get("Status"),
            "final_recipient": b.get("Final-Recipient"),
            "original_recipient": b.get("Original-Recipient"),
        }
        for b in blocks[1:]
    ]
    returned = msg.get_payload()[-1]
    out["returned_type"] = returned.get_content_type()
    if returned.get_content_type() == "message/rfc822":
        inner = returned.get_payload()[0]
        out["returned_body"] = inner.get_payload()
    else:
        out["returned_body"] = None
    return out


for path in sys.argv[1:]:
    print(json.dumps(describe(path)))
