"""Fuzzes a running vmm's control API with schemathesis, over its Unix socket.

Run by vmm/tests/schemathesis.rs with the virtualenv ci/setup.sh makes (target/ci-venv):

    python schemathesis_run.py --spec vmm/api/openapi.yaml --socket /path/api.sock

For every documented operation with inputs but the shutdown action (tested separately, by the
Rust test), schemathesis generates at least --examples valid and --examples invalid requests
from the document. Operations without inputs (the GETs) have exactly one valid request and no
invalid one in schemathesis's sense: they are sent after every generated request, so each is
checked at least --examples times, in every state the fuzzing leaves the VM in. Every answer
must be no 5xx, have a documented status and content type, match its schema, and refuse invalid
input with a 4xx. Each path is also sent the methods it does not take (405 with Allow and the
error body). Prints a table of what was sent and what came back; exits 1 on any failure.

The schemathesis command line speaks only TCP, so this uses its Python API with a requests
adapter that connects to the Unix socket (a dozen lines here rather than another dependency).
"""

import argparse
import collections
import json
import socket
import sys

import requests
from hypothesis import HealthCheck, Phase, given, settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

BASE_URL = "http://localhost"
EXCLUDED = {"createSyncAction"}  # PUT /actions: a valid body shuts the VM down.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# positive_data_acceptance is left out: a schema-valid amount_mib above the guest's memory is
# rightly refused with 400, and the guest's size is not in the document.


class UnixConnection(HTTPConnection):
    def __init__(self, path, **kwargs):
        super().__init__("localhost", **kwargs)
        self.unix_path = path

    def _new_conn(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.unix_path)
        return s


class UnixPool(HTTPConnectionPool):
    def __init__(self, path):
        super().__init__("localhost")
        self.unix_path = path

    def _new_conn(self):
        return UnixConnection(self.unix_path, timeout=self.timeout)


class UnixAdapter(HTTPAdapter):
    def __init__(self, path):
        super().__init__()
        self.pool = UnixPool(path)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self.pool

    def get_connection(self, url, proxies=None):
        return self.pool

    def close(self):
        self.pool.close()


def session_for(path):
    s = requests.Session()
    s.mount(BASE_URL, UnixAdapter(path))
    return s


def has_inputs(op):
    raw = op.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


def call_and_check(case, session, sent, label, mode):
    response = case.call(base_url=BASE_URL, session=session)
    sent[(label, mode, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


def fuzz(op, mode, examples, session, sent, probes):
    """Runs `examples` generated cases of `mode` against `op`, each followed by every probe (an
    operation without inputs); returns failure text or None."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        call_and_check(case, session, sent, op.label, mode.value)
        for probe in probes:
            call_and_check(probe.Case(), session, sent, probe.label, "positive")

    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a check failed: schemathesis raises a group with the details
        return f"{op.label} [{mode.value}]: {e}"
    return None


def wrong_methods(schema_dict, session):
    """Every path answers a method it does not take with 405, Allow and the error body."""
    failures = []
    probe = ["GET", "PUT", "PATCH", "POST", "DELETE"]
    for path, item in schema_dict["paths"].items():
        allowed = {m.upper() for m in item}
        for m in probe:
            if m in allowed:
                continue
            r = session.request(m, BASE_URL + path, data=b"{}")
            ok = (
                r.status_code == 405
                and set(a.strip() for a in r.headers.get("allow", "").split(",")) == allowed
                and isinstance(r.json().get("fault_message"), str)
            )
            if not ok:
                failures.append(f"{m} {path}: {r.status_code} {dict(r.headers)} {r.text}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="the OpenAPI document")
    ap.add_argument("--socket", required=True, help="the API's Unix socket")
    ap.add_argument("--examples", type=int, default=50, help="cases per operation and mode")
    args = ap.parse_args()

    schema = schemathesis.openapi.from_path(args.spec)
    session = session_for(args.socket)
    sent = collections.Counter()
    failures = []
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("operationId") not in EXCLUDED:
            operations.append(op)
    probes = [op for op in operations if not has_inputs(op)]
    for op in operations:
        if not has_inputs(op):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            f = fuzz(op, mode, args.examples, session, sent, probes)
            if f:
                failures.append(f)

    with open(args.spec) as f:
        import yaml  # schemathesis depends on PyYAML

        failures += wrong_methods(yaml.safe_load(f), session)

    print(f"schemathesis {schemathesis.__version__}: {len(operations)} operations")
    print(f"{'operation':34} {'mode':9} {'sent':>5}  statuses")
    for op in operations:
        for mode in ("positive", "negative") if has_inputs(op) else ("positive",):
            by_status = {s: n for (label, m, s), n in sent.items() if label == op.label and m == mode}
            total = sum(by_status.values())
            print(f"{op.label:34} {mode:9} {total:5}  {json.dumps(dict(sorted(by_status.items())))}")
            if total < args.examples:
                failures.append(f"{op.label} [{mode}]: only {total} requests sent")
    if failures:
        print(f"\n{len(failures)} FAILURES:")
        for f in failures:
            print(f"\n{f}")
        return 1
    print("no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
