#!/usr/bin/env python3
"""~RATE msg/s, keys over 500 accounts, for DURATION seconds."""
import sys, time, json, random
from confluent_kafka import Producer
bootstrap, topic, duration, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
n = 0; t0 = time.time()
while True:
    now = time.time()
    if now - t0 >= duration: break
    target = int((now - t0) * rate)
    while n < target:
        acct = random.randrange(500)
        p.produce(topic, key=f"acct-{acct}", value=json.dumps({"seq": n, "acct": acct, "amt": random.randint(1, 100)}))
        n += 1
    p.poll(0)
    time.sleep(0.01)
p.flush(30)
print(json.dumps({"produced": n, "secs": round(time.time() - t0, 1)}), flush=True)
