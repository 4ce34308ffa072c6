#!/usr/bin/env python3
"""Plain consumer loop: consume batch, 'process', commit the batch asynchronously.
args: bootstrap topic group protocol(consumer|classic) instance_id(or '-') logfile"""
import sys, time, json, signal
from confluent_kafka import Consumer, KafkaError
bootstrap, topic, group, protocol, inst, logpath = sys.argv[1:7]
log = open(logpath, "a", buffering=1)
def L(*a): log.write(f"{time.strftime('%H:%M:%S')}.{int(time.time()*1000)%1000:03d} APP " + " ".join(str(x) for x in a) + "\n")
def logger_cb(lg):  # not used; librdkafka logs go to stderr
    pass
conf = {"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": protocol,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "debug": "cgrp", "error_cb": lambda e: L("ERROR_CB", e.code(), e.name(), e.str(), "fatal" if e.fatal() else "")}
if protocol == "classic":
    conf.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000, "partition.assignment.strategy": "cooperative-sticky"})
if inst != "-":
    conf["group.instance.id"] = inst
import os
RECREATE = os.environ.get("RECREATE_ON_FATAL") == "1"  # mitigation test: destroy + recreate the client on a fatal error
def make():
    cons = Consumer(conf)
    cons.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    return cons
def on_assign(cons, parts): L("ASSIGN", [p.partition for p in parts])
def on_revoke(cons, parts): L("REVOKE", [p.partition for p in parts])
def on_lost(cons, parts): L("LOST", [p.partition for p in parts])
c = make()
L("START", inst, protocol, "recreate_on_fatal" if RECREATE else "")
counts = {}; last = time.time()
while True:
    msgs = c.consume(num_messages=500, timeout=0.5)
    batch = {}
    for m in msgs:
        if m.error():
            L("MSG_ERROR", m.error().code(), m.error().name(), m.error().str(), "fatal" if (m.error().fatal() or m.error().code() == KafkaError._FATAL) else "")
            if RECREATE and (m.error().fatal() or m.error().code() == KafkaError._FATAL):
                try: c.close()
                except Exception as e: L("CLOSE_EXC", repr(e))
                time.sleep(2); c = make(); L("RECREATED consumer after fatal error"); break
            continue
        _ = json.loads(m.value())  # "processing"
        batch[m.partition()] = m.offset()
        counts[m.partition()] = counts.get(m.partition(), 0) + 1
    if batch:
        from confluent_kafka import TopicPartition
        try:
            c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in batch.items()], asynchronous=True)
        except Exception as e:
            L("COMMIT_EXC", repr(e))
    if time.time() - last >= 5:
        last = time.time()
        try: asg = sorted(p.partition for p in c.assignment())
        except Exception as e: asg = repr(e)
        L("STATUS assignment=", asg, "consumed=", dict(sorted(counts.items())))
