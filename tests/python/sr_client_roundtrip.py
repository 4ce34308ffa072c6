#!/usr/bin/env python3
"""Round trip through a schema registry with the real Confluent Python client.

Checks that a registry speaks the Confluent Schema Registry REST API the way
confluent-kafka's SchemaRegistryClient, AvroSerializer and AvroDeserializer use it.
Needs only the registry (no Kafka):

    pip install -r tests/python/requirements.txt
    SCHEMA_REGISTRY_URL=http://127.0.0.1:8081 SUBJECT_PREFIX=ci-$RANDOM \
        python tests/python/sr_client_roundtrip.py

SUBJECT_PREFIX keeps the subjects of one run apart from every other run; the script
deletes its subject at the end unless KEEP_SUBJECTS=1.

A registry behind basic auth: BASIC_AUTH_USER_INFO=user:password signs every client in
(an admin: the script changes compatibility levels); READ_ONLY_USER_INFO, if set, names a
user with the read role, and the script also checks that a client without credentials is
refused (401) and the read-only user may read but not register (403).
A registry over HTTPS whose CA the system does not trust: SCHEMA_REGISTRY_CA=ca.pem
(the client's ssl.ca.location).
Prints one line per check; exits 1 with a message on the first failure.
"""

import json
import os
import struct
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schemas" / "transaction_event.avsc"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message, detail=""):
    if not condition:
        fail(f"{message}{': ' + detail if detail else ''}")
    print(f"ok   {message}")


try:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext
    from fastavro.schema import parse_schema, to_parsing_canonical_form
except ImportError as e:  # pragma: no cover - environment problem, not a registry problem
    fail(f"cannot import the Confluent client ({e}); pip install -r tests/python/requirements.txt")


def canonical(schema_str):
    """Avro Parsing Canonical Form, so a registry may reformat the JSON it returns."""
    return to_parsing_canonical_form(parse_schema(json.loads(schema_str), named_schemas={}))


def client(url, user_info=None):
    # No retries: a conforming registry answers every call here on the first attempt,
    # and retries on 5xx would hide server errors.
    conf = {"url": url, "max.retries": 0, "timeout": 15}
    user_info = user_info if user_info is not None else os.environ.get("BASIC_AUTH_USER_INFO")
    if user_info:
        conf["basic.auth.user.info"] = user_info
    if os.environ.get("SCHEMA_REGISTRY_CA"):
        conf["ssl.ca.location"] = os.environ["SCHEMA_REGISTRY_CA"]
    return SchemaRegistryClient(conf)


def refused(what, fn, status, code):
    try:
        fn()
    except SchemaRegistryError as e:
        check(e.http_status_code == status and e.error_code == code,
              f"{what} is HTTP {status} with error_code {code}",
              f"http={e.http_status_code} code={e.error_code} message={e.error_message}")
        return
    fail(f"{what} succeeded; expected HTTP {status}")


def evolve(schema_str, field):
    schema = json.loads(schema_str)
    schema["fields"].append(field)
    return json.dumps(schema)


def call(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SchemaRegistryError as e:
        fail(f"{what}: registry error http={e.http_status_code} code={e.error_code} message={e.error_message}")
    except Exception as e:  # transport errors, malformed responses
        fail(f"{what}: {type(e).__name__}: {e}")


def main():
    url = os.environ.get("SCHEMA_REGISTRY_URL")
    if not url:
        fail("set SCHEMA_REGISTRY_URL to the registry's base URL, e.g. http://127.0.0.1:8081")
    prefix = os.environ.get("SUBJECT_PREFIX") or f"py-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}-transactions"
    subject = f"{topic}-value"  # TopicNameStrategy, as DESIGN.md requires
    ctx = SerializationContext(topic, MessageField.VALUE)
    print(f"registry {url}, subject {subject}")

    schema_str = SCHEMA_PATH.read_text(encoding="utf-8").strip()
    want_canonical = canonical(schema_str)

    sample = {
        "event_id": uuid.uuid4(),
        "tenant_id": "tenant-a",
        "occurred_at": datetime.now(timezone.utc).replace(microsecond=123000),
        "account_id": "acct-0001",
        "amount": 42.5,
        "currency": "EUR",
        "merchant_id": "merchant-77",
        "merchant_category": "5411",
        "country": "DE",
        "channel": "ONLINE",
        "customer_age_years": 37,
        "account_age_months": 18,
        "credit_history": "existing_paid",
        "employment_years": None,
        "existing_credits": 1,
    }

    # 1. Serialize with auto.register.schemas=True (the default): POST /subjects/{s}/versions.
    writer_client = client(url)
    serializer = AvroSerializer(writer_client, schema_str)
    data = call("serialize (auto-register)", serializer, sample, ctx)
    check(len(data) > 5 and data[0] == 0, "serialized value starts with magic byte 0", repr(data[:5]))
    wire_id = struct.unpack(">I", data[1:5])[0]
    print(f"     schema id on the wire: {wire_id}")

    # Fresh clients from here on, so every call below reaches the registry instead of
    # the client's cache.
    c = client(url)
    latest = call("get_latest_version", c.get_latest_version, subject)
    check(latest.schema_id == wire_id, "get_latest_version id equals the wire id", f"{latest.schema_id} != {wire_id}")
    check(latest.version == 1, "get_latest_version is version 1", f"got {latest.version}")
    check(latest.subject == subject, "get_latest_version names the subject", f"got {latest.subject!r}")
    check(latest.schema.schema_type == "AVRO", "get_latest_version schemaType is AVRO", f"got {latest.schema.schema_type!r}")
    check(
        latest.schema.schema_str is not None and canonical(latest.schema.schema_str) == want_canonical,
        "get_latest_version returns the registered schema",
    )

    # 2. Deserialize with a client that has never seen the id: GET /schemas/ids/{id}?subject=...
    deserializer = AvroDeserializer(client(url))
    decoded = call("deserialize", deserializer, data, ctx)
    check(decoded == sample, "deserialized record equals the input", f"{decoded!r} != {sample!r}")

    # 3. Registering the same schema again returns the same id.
    again = call("register_schema", c.register_schema, subject, Schema(schema_str, "AVRO"))
    check(again == wire_id, "register_schema of the same schema returns the same id", f"{again} != {wire_id}")

    subjects = call("get_subjects", c.get_subjects)
    check(isinstance(subjects, list) and subject in subjects, "get_subjects lists the subject", f"got {subjects!r}")

    versions = call("get_versions", c.get_versions, subject)
    check(versions == [1], "get_versions is [1]", f"got {versions!r}")

    by_id = call("get_schema", client(url).get_schema, wire_id)
    check(by_id.schema_type == "AVRO", "get_schema schemaType is AVRO", f"got {by_id.schema_type!r}")
    check(
        by_id.schema_str is not None and canonical(by_id.schema_str) == want_canonical,
        "get_schema returns the registered schema",
    )

    found = call("lookup_schema", client(url).lookup_schema, subject, Schema(schema_str, "AVRO"))
    check(
        (found.schema_id, found.version, found.subject) == (wire_id, 1, subject),
        "lookup_schema finds id, version 1 and subject",
        f"got id={found.schema_id} version={found.version} subject={found.subject!r}",
    )

    # 4. Compatibility. Pin the subject to BACKWARD (Confluent's default) so the result
    #    does not depend on a global level some other test may have changed.
    call("set_compatibility BACKWARD", c.set_compatibility, subject_name=subject, level="BACKWARD")
    optional_added = evolve(
        schema_str,
        {"name": "device_id", "type": ["null", "string"], "default": None, "doc": "Device, if known."},
    )
    required_added = evolve(
        schema_str,
        {"name": "risk_segment", "type": "string", "doc": "Required, no default: breaks old data."},
    )
    ok = call("test_compatibility (optional field)", c.test_compatibility, subject, Schema(optional_added, "AVRO"))
    check(ok is True, "test_compatibility: adding an optional field with default null is compatible", f"got {ok!r}")
    bad = call("test_compatibility (required field)", c.test_compatibility, subject, Schema(required_added, "AVRO"))
    check(bad is False, "test_compatibility: adding a required field without default is incompatible", f"got {bad!r}")

    answer = call("set_compatibility FULL", c.set_compatibility, subject_name=subject, level="FULL")
    print(f"     set_compatibility answered {answer!r}")
    level = call("get_compatibility", c.get_compatibility, subject)
    check(level == "FULL", "get_compatibility is FULL after set_compatibility", f"got {level!r}")

    # 5. Errors come back in Confluent's shape ({"error_code", "message"}).
    try:
        c.register_schema(subject, Schema(required_added, "AVRO"))
        fail("registering an incompatible schema under FULL succeeded; expected HTTP 409")
    except SchemaRegistryError as e:
        check(e.http_status_code == 409, "registering an incompatible schema is rejected with HTTP 409",
              f"http={e.http_status_code} code={e.error_code} message={e.error_message}")
    try:
        c.get_latest_version(f"{prefix}-no-such-topic-value")
        fail("get_latest_version of an unknown subject succeeded; expected HTTP 404")
    except SchemaRegistryError as e:
        check(e.http_status_code == 404 and e.error_code == 40401,
              "unknown subject is HTTP 404 with error_code 40401",
              f"http={e.http_status_code} code={e.error_code} message={e.error_message}")

    read_only = os.environ.get("READ_ONLY_USER_INFO")
    if read_only:
        refused("a client without credentials", client(url, "").get_subjects, 401, 401)
        reader = client(url, read_only)
        listed = call("get_subjects (read-only user)", reader.get_subjects)
        check(subject in listed, "the read-only user lists the subject")
        refused("registering as the read-only user",
                lambda: reader.register_schema(subject, Schema(optional_added, "AVRO")), 403, 40301)

    if os.environ.get("KEEP_SUBJECTS") != "1":
        soft = call("delete_subject", c.delete_subject, subject)
        check(soft == [1], "delete_subject (soft) returns [1]", f"got {soft!r}")
        hard = call("delete_subject permanent", c.delete_subject, subject, permanent=True)
        check(hard == [1], "delete_subject (permanent) returns [1]", f"got {hard!r}")

    print("python client round trip: OK")


if __name__ == "__main__":
    main()
