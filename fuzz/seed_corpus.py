#!/usr/bin/env python3
"""Seeds the fuzz corpora from the RFC 9421 / RFC 9530 vectors.

Reads ../test-vectors/rfc9421-vectors.json and writes one file per seed input to
corpus/<target>/ (git-ignored; libFuzzer adds what it finds there too):

* signature_input:  every Signature-Input value (vectors, messages, section 4.1)
* signature:        every Signature value
* accept_signature: the section 5.1 Accept-Signature value, and every Signature-Input
                    value (a valid Accept-Signature value as well)
* content_digest:   every Content-Digest value, the RFC 9530 examples, the
                    Want-*-Digest values of RFC 9530 section 4
* component:        every covered component identifier, and a few bare names
* message_verify:   every vector message as raw HTTP/1.1 (CRLF), with its
                    Signature-Input / Signature fields added where the vector gives
                    them apart from the message, and the component examples' messages

Usage: python3 fuzz/seed_corpus.py   (from anywhere; standard library only)
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "test-vectors", "rfc9421-vectors.json")
CORPUS = os.path.join(HERE, "corpus")
TARGETS = (
    "signature_input",
    "signature",
    "accept_signature",
    "content_digest",
    "component",
    "message_verify",
)


def raw_message(m, extra_headers=()):
    """A vector message ({start_line, headers, body}) as raw HTTP/1.1 bytes."""
    lines = [m["start_line"]]
    lines += ["%s: %s" % (n, v) for n, v in list(m["headers"]) + list(extra_headers)]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return (head + (m.get("body") or "")).encode("utf-8")


def field(m, name):
    return [v for n, v in m["headers"] if n.lower() == name.lower()]


def main():
    with open(VECTORS, encoding="utf-8") as f:
        d = json.load(f)
    seeds = {t: {} for t in TARGETS}

    def add(target, name, value):
        if isinstance(value, str):
            value = value.encode("utf-8")
        seeds[target].setdefault(value, name)

    messages = dict(d["messages"])
    messages.update(d["extra_messages"])

    for v in d["signature_vectors"]:
        vid = v["id"]
        add("signature_input", vid, v["signature_input_header"])
        add("accept_signature", vid, v["signature_input_header"])
        add("signature", vid, v["signature_header"])
        add("signature_input", vid + "-params", "%s=%s" % (v["label"], v["signature_params_serialized"]))
        for c in v["covered_components"]:
            add("component", vid, c)
        if "message" in v:
            m = v["message"]
            extra = []
        else:
            m = messages[v["message_ref"]]
            extra = [
                ("Signature-Input", v["signature_input_header"]),
                ("Signature", v["signature_header"]),
            ]
        add("message_verify", vid, raw_message(m, extra))
        related = v.get("related_request")
        if isinstance(related, dict) and "start_line" in related:
            add("message_verify", vid + "-related", raw_message(related))
        for mm in [m] + ([related] if isinstance(related, dict) else []):
            if "headers" not in mm:
                continue
            for name in ("Signature-Input",):
                for val in field(mm, name):
                    add("signature_input", vid + "-msg", val)
                    add("accept_signature", vid + "-msg", val)
            for val in field(mm, "Signature"):
                add("signature", vid + "-msg", val)
            for val in field(mm, "Content-Digest"):
                add("content_digest", vid, val)

    for name, m in messages.items():
        add("message_verify", name, raw_message(m))
        for val in field(m, "Content-Digest"):
            add("content_digest", name, val)

    for h in d["header_field_examples"]:
        target = {
            "Signature-Input": "signature_input",
            "Signature": "signature",
            "Accept-Signature": "accept_signature",
        }[h["field"]]
        add(target, h["id"], h["value"])

    for c in d["component_examples"]:
        inp = c.get("input", {})
        if "message_raw" in inp:
            raw = inp["message_raw"]
            head, sep, body = raw.partition("\n\n")
            crlf = head.replace("\n", "\r\n") + "\r\n\r\n" + body
            add("message_verify", c["id"], crlf)
        if "header_lines_raw" in inp:
            lines = ["GET / HTTP/1.1", "Host: www.example.com"] + inp["header_lines_raw"]
            add("message_verify", c["id"], "\r\n".join(lines) + "\r\n\r\n")
        for line in c.get("expected_base_lines", []):
            ident = line.split(": ", 1)[0]
            if ident.startswith('"') and not ident.startswith('"@signature'):
                add("component", c["id"], ident)
            elif ident.startswith("("):
                add("signature_input", c["id"], "sig=" + ident)
    for bare in ("@method", "@target-uri", "@authority", "@scheme", "@request-target",
                 "@path", "@query", "@status", "Content-Type", "Example-Dict"):
        add("component", "bare", bare)

    def digest_member(e):
        # "md5 (deprecated)" -> "md5"; appendix D values are printed with their colons.
        return "%s=:%s:" % (e["algorithm"].split()[0], e["computed_value"].strip(":"))

    for e in d["digest"]["content_digest_examples"]:
        add("content_digest", e["id"], digest_member(e))
    both = ", ".join(digest_member(e) for e in d["digest"]["content_digest_examples"][:2])
    add("content_digest", "two-members", both)
    for line in d["digest"]["want_digest_examples"]["lines"]:
        add("content_digest", "want", line.split(": ", 1)[1])

    total = 0
    for target, values in seeds.items():
        out = os.path.join(CORPUS, target)
        os.makedirs(out, exist_ok=True)
        for value, name in values.items():
            safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name)
            h = hashlib.sha1(value).hexdigest()[:12]
            with open(os.path.join(out, "seed-%s-%s" % (safe, h)), "wb") as f:
                f.write(value)
        print("%-17s %3d seeds -> %s" % (target, len(values), os.path.relpath(out)))
        total += len(values)
    print("total %d" % total, file=sys.stderr)


if __name__ == "__main__":
    main()
