#!/usr/bin/env python3
"""Print per-partition end offset, committed offset, lag as JSON. args: bootstrap topic group"""
import sys, json
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, group = sys.argv[1:4]
# a non-subscribing consumer: only OffsetFetch + ListOffsets, never joins the group
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
md = c.list_topics(topic, timeout=10)
parts = sorted(md.topics[topic].partitions)
com = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
out = {}
for tp in com:
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
    co = tp.offset if tp.offset >= 0 else 0
    out[tp.partition] = {"end": hi, "committed": tp.offset, "lag": hi - co}
c.close()
print(json.dumps(out))
