#!/usr/bin/env python3
"""The fraud-detector's per-event work as a plain confluent-kafka loop: what a user would
write instead of verdict. `verdict-loadtest peers` runs it beside verdict on the same broker
and the same pre-filled events.

Per event: Avro decode through the registry (AvroDeserializer), the same logistic model
(models/fraud/model.json, the formula in its "formula" field), the same rules (amount limit,
velocity per account), a decision and an audit record (SHA-256 of the input bytes) Avro-encoded
through the registry, a review copy when the decision needs a person, and the input offsets
committed only after the outputs are acknowledged (at least once).

    --mode naive    the textbook loop: one event at a time through the Confluent client's
                    AvroDeserializer/AvroSerializer; produce, flush, commit
    --mode batched  a tuned loop: consume up to --batch events, decode and encode with
                    fastavro directly (writer schemas fetched once by id and subject, as
                    verdict does), produce them all, flush once, commit once

Prints READY when it has partitions, then, after --count events, DONE <events> <seconds>
<cpu seconds>: wall and CPU time (user + system) since READY.
"""

import argparse
import hashlib
import io
import json
import struct
import math
import sys
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


class Fast:
    """Confluent wire format with fastavro: writer schemas by id (decode) and by subject
    (encode), each fetched from the registry once."""

    def __init__(self, sr):
        self.sr, self.readers = sr, {}

    def decode(self, raw):
        if len(raw) < 5 or raw[0] != 0:
            raise ValueError("not in the Confluent wire format")
        (sid,) = struct.unpack(">I", raw[1:5])
        schema = self.readers.get(sid)
        if schema is None:
            schema = fastavro.parse_schema(json.loads(self.sr.get_schema(sid).schema_str))
            self.readers[sid] = schema
        return fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema)

    def writer(self, subject, schema_str=None):
        if schema_str is None:
            registered = self.sr.get_latest_version(subject)
            sid, text = registered.schema_id, registered.schema.schema_str
        else:
            from confluent_kafka.schema_registry import Schema
            sid, text = self.sr.register_schema(subject, Schema(schema_str, "AVRO")), schema_str
        parsed, header = fastavro.parse_schema(json.loads(text)), b"\x00" + struct.pack(">I", sid)

        def encode(record, _ctx=None):
            out = io.BytesIO()
            out.write(header)
            fastavro.schemaless_writer(out, parsed, record)
            return out.getvalue()

        return encode

ROOT = Path(__file__).resolve().parents[2]


class Model:
    def __init__(self, path):
        m = json.loads(Path(path).read_text())
        self.name, self.version, self.intercept = m["name"], m["version"], m["intercept"]
        self.numeric, self.categorical = m["numeric"], m["categorical"]

    def score(self, tx):
        z = self.intercept
        contributions = []
        for f in self.numeric:
            x = FEATURES[f["field"]](tx)
            x = f["median"] if x is None or not math.isfinite(x) else x
            if f["transform"] == "log1p":
                x = math.log1p(max(x, 0.0))
            c = f["coefficient"] * (x - f["mean"]) / f["std"]
            z += c
            contributions.append((f["field"], c))
        for f in self.categorical:
            c = f["categories"].get(tx.get(f["field"]), 0.0)
            z += c
            contributions.append((f["field"], c))
        return 1.0 / (1.0 + math.exp(-z)), contributions


def opt(v, f=float):
    return None if v is None else f(v)


FEATURES = {
    "amount": lambda tx: tx["amount"],
    "customer_age_years": lambda tx: opt(tx.get("customer_age_years")),
    "employment_years": lambda tx: opt(tx.get("employment_years"), lambda v: min(float(v), 10.0)),
    "existing_credits": lambda tx: opt(tx.get("existing_credits")),
}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--mode", choices=["naive", "batched"], required=True)
    a.add_argument("--bootstrap", required=True)
    a.add_argument("--registry", required=True)
    a.add_argument("--group", required=True)
    a.add_argument("--input", required=True)
    a.add_argument("--decisions", required=True)
    a.add_argument("--audit", required=True)
    a.add_argument("--review", required=True)
    a.add_argument("--count", type=int, required=True)
    a.add_argument("--batch", type=int, default=500)
    args = a.parse_args()

    model = Model(ROOT / "models/fraud/model.json")
    decision_schema = (ROOT / "schemas/fraud_decision.avsc").read_text()
    audit_schema = (ROOT / "schemas/audit_event.avsc").read_text()
    sr = SchemaRegistryClient({"url": args.registry})
    if args.mode == "naive":
        deserializer = AvroDeserializer(sr)
        decode = lambda raw, topic: deserializer(raw, SerializationContext(topic, MessageField.VALUE))  # noqa: E731
        latest = {"auto.register.schemas": False, "use.latest.version": True}
        encode_decision = AvroSerializer(sr, decision_schema, conf=latest)
        encode_audit = AvroSerializer(sr, audit_schema, conf=latest)
        encode_review = AvroSerializer(sr, decision_schema, conf={"subject.name.strategy": topic_record_subject_name_strategy})
    else:
        fast = Fast(sr)
        decode = lambda raw, topic: fast.decode(raw)  # noqa: E731
        encode_decision = fast.writer(f"{args.decisions}-value")
        encode_audit = fast.writer(f"{args.audit}-value")
        encode_review = fast.writer(f"{args.review}-dev.verdict.v1.FraudDecision", decision_schema)

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    ready = []

    def on_assign(c, partitions):
        if not ready:
            ready.append((time.perf_counter(), time.process_time()))
            print("READY", flush=True)

    consumer.subscribe([args.input], on_assign=on_assign)
    velocity = defaultdict(deque)
    actor = f"python-{args.mode}/{__import__('os').getpid()}"

    def process(msg):
        raw = msg.value()
        tx = decode(raw, msg.topic())
        stages = []
        t = time.perf_counter()
        p, contributions = model.score(tx)
        stages.append({"stage": "score", "micros": int((time.perf_counter() - t) * 1e6)})
        times = velocity[tx["account_id"]]
        at = tx["occurred_at"]
        at = int(at.timestamp() * 1000) if hasattr(at, "timestamp") else at
        while times and times[0] <= at - 60_000:
            times.popleft()
        times.append(at)
        over_limit, too_fast = tx["amount"] > 10_000.0, len(times) > 5
        reasons = []
        if over_limit:
            reasons.append(f"rule: amount {tx['amount']:.2f} {tx['currency']} is above the limit 10000.00")
        if too_fast:
            reasons.append(f"rule: {len(times)} transactions of this account within 60000 ms (limit 5)")
        drivers = sorted((c for c in contributions if c[1] > 0), key=lambda c: -c[1])[:3]
        reasons += [f"model: {f} raises the risk (+{c:.3f} log-odds)" for f, c in drivers]
        outcome = "DECLINE" if over_limit or p >= 0.6 else "REVIEW" if p >= 0.4 or too_fast else "APPROVE"
        margin = min(abs(p - 0.4), abs(p - 0.6))
        now = int(time.time() * 1000)
        decision = {
            "event_id": tx["event_id"], "tenant_id": tx["tenant_id"], "decided_at": now,
            "account_id": tx["account_id"], "outcome": outcome, "score": p,
            "confidence": 1.0 if over_limit else min(margin / 0.5, 1.0), "reasons": reasons,
            "model": {"name": model.name, "version": model.version, "provider": "in-process", "prompt_version": None},
            "stage_timings": stages, "degraded": False, "cached": False,
        }
        audit = {
            "audit_id": str(uuid.uuid4()), "event_id": tx["event_id"], "tenant_id": tx["tenant_id"],
            "occurred_at": now, "service": "python-fraud-loop", "action": "DECISION", "actor": actor,
            "input_sha256": hashlib.sha256(raw).hexdigest(), "outcome": outcome,
            "model_name": model.name, "model_version": model.version, "latency_micros": None,
            "token_usage": None, "cost_usd": None,
            "details": {"score": f"{p:.6f}", "source": f"{msg.topic()}/{msg.partition()}@{msg.offset()}"},
        }
        key = msg.key()
        producer.produce(args.decisions, key=key, value=encode_decision(decision, SerializationContext(args.decisions, MessageField.VALUE)))
        producer.produce(args.audit, key=key, value=encode_audit(audit, SerializationContext(args.audit, MessageField.VALUE)))
        if outcome == "REVIEW" or (not over_limit and margin < 0.02):
            producer.produce(args.review, key=key, value=encode_review(decision, SerializationContext(args.review, MessageField.VALUE)))
        producer.poll(0)

    done = 0
    while done < args.count:
        if args.mode == "naive":
            msg = consumer.poll(1.0)
            batch = [msg] if msg is not None and not msg.error() else []
        else:
            batch = [m for m in consumer.consume(args.batch, 1.0) if not m.error()]
        if not batch:
            continue
        for msg in batch:
            process(msg)
        producer.flush()
        consumer.commit(asynchronous=False)
        done += len(batch)
    wall, cpu = ready[0]
    print(f"DONE {done} {time.perf_counter() - wall:.3f} {time.process_time() - cpu:.3f}", flush=True)
    consumer.close()


if __name__ == "__main__":
    sys.exit(main())
