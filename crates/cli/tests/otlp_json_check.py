"""Checks OTLP/HTTP JSON bodies against the official protobuf definitions
(the `opentelemetry-proto` package).

Usage: otlp_json_check.py logs|traces FILE...

Each FILE holds one request body. It is parsed strictly (unknown fields and
wrong types are errors) into ExportLogsServiceRequest or
ExportTraceServiceRequest. OTLP's JSON differs from the generic Protobuf JSON
mapping in one point: trace and span ids are hex, not base64; they are turned
into base64 first, as OTLP receivers do, and must then be 16 and 8 bytes.
Exit status 2 means the package is missing (the caller skips), 1 a bad body.
"""

import base64
import json
import sys

try:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
except ImportError as e:
    print(f"opentelemetry-proto is not installed: {e}", file=sys.stderr)
    sys.exit(2)

ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def hex_ids_to_base64(node):
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in ID_FIELDS and isinstance(value, str):
                raw = bytes.fromhex(value)
                if len(raw) != ID_FIELDS[key]:
                    raise ValueError(f"{key} `{value}` is not {ID_FIELDS[key]} bytes")
                node[key] = base64.b64encode(raw).decode()
            else:
                hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids_to_base64(item)


def main():
    kind, files = sys.argv[1], sys.argv[2:]
    message = {"logs": ExportLogsServiceRequest, "traces": ExportTraceServiceRequest}[kind]
    count = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
        try:
            hex_ids_to_base64(body)
            parsed = json_format.ParseDict(body, message(), ignore_unknown_fields=False)
        except Exception as e:  # noqa: BLE001 - report any parse failure
            print(f"{path}: not a valid OTLP {kind} request: {e}", file=sys.stderr)
            sys.exit(1)
        if kind == "logs":
            for rl in parsed.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        if record.time_unix_nano == 0 or record.severity_number == 0:
                            print(f"{path}: log record without time or severity", file=sys.stderr)
                            sys.exit(1)
                        count += 1
        else:
            for rs in parsed.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        if span.end_time_unix_nano < span.start_time_unix_nano:
                            print(f"{path}: span ends before it starts", file=sys.stderr)
                            sys.exit(1)
                        count += 1
    print(count)


main()
