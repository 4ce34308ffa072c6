#!/usr/bin/env python3
"""Reads verdict's fraud decisions with the real Confluent Python client, as a user's own
consumer would on a secured cluster: Kafka over SASL_SSL (SCRAM) and the schema registry
over HTTPS with basic auth, the Avro values decoded by AvroDeserializer.

    BOOTSTRAP_SERVERS=127.0.0.1:9092 TOPIC=fraud-decisions WANT=3 \
    SASL_USERNAME=admin SASL_PASSWORD=... CA_LOCATION=ca.pem \
    SCHEMA_REGISTRY_URL=https://127.0.0.1:8081 BASIC_AUTH_USER_INFO=admin:... \
        python tests/python/read_decisions.py

Reads the topic from the beginning (a group of its own, no commits) until WANT decisions
arrived or 60 s passed; prints one JSON line per decision (event id, outcome, model) and
exits 1 with a message if fewer came.
"""

import json
import os
import sys
import time
import uuid

try:
    from confluent_kafka import DeserializingConsumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
except ImportError as e:  # pragma: no cover - environment problem
    print(f"FAIL: cannot import the Confluent client ({e}); pip install -r tests/python/requirements.txt",
          file=sys.stderr)
    sys.exit(1)


def env(name):
    value = os.environ.get(name)
    if not value:
        print(f"FAIL: set {name}", file=sys.stderr)
        sys.exit(1)
    return value


def main():
    ca = env("CA_LOCATION")
    registry = SchemaRegistryClient({
        "url": env("SCHEMA_REGISTRY_URL"),
        "basic.auth.user.info": env("BASIC_AUTH_USER_INFO"),
        "ssl.ca.location": ca,
    })
    consumer = DeserializingConsumer({
        "bootstrap.servers": env("BOOTSTRAP_SERVERS"),
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": env("SASL_USERNAME"),
        "sasl.password": env("SASL_PASSWORD"),
        "ssl.ca.location": ca,
        "group.id": f"python-reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "value.deserializer": AvroDeserializer(registry),
    })
    want = int(env("WANT"))
    consumer.subscribe([env("TOPIC")])
    seen = {}
    deadline = time.monotonic() + 60
    try:
        while len(seen) < want and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                print(f"FAIL: {msg.error()}", file=sys.stderr)
                sys.exit(1)
            d = msg.value()
            seen[d["event_id"]] = d
            print(json.dumps({"event_id": str(d["event_id"]), "outcome": d["outcome"],
                              "model": d["model"]}, default=str), flush=True)
    finally:
        consumer.close()
    if len(seen) < want:
        print(f"FAIL: {len(seen)} of {want} decisions within 60 s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
