#!/usr/bin/env python3
"""One chaos run. usage: driver.py RUN_NAME PROTOCOL(consumer|classic) MEMBERSHIP(static|dynamic) [FEED_SECS=100] [WAIT_SECS=180] [KILLS=floor(feed/10), at 10 s intervals, alternating inst-a/inst-b]"""
import sys, os, time, json, signal, subprocess
from confluent_kafka.admin import AdminClient, NewTopic
BOOT = "127.0.0.1:39092"
LIBS = os.path.expanduser("~/.local/share/verdict/kafka-4.4.0/libs")
HERE = os.path.dirname(os.path.abspath(__file__)); PY = os.path.join(HERE, "venv/bin/python")
name, proto, memb = sys.argv[1:4]
feed = float(sys.argv[4]) if len(sys.argv) > 4 else 100
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 180
nkills = int(sys.argv[6]) if len(sys.argv) > 6 else int((feed - 0.001) // 10)  # kills at 10,20,... s into the feed
rd = os.path.join(HERE, "runs", name); os.makedirs(rd, exist_ok=True)
topic, group = f"t-{name}", f"g-{name}"
dl = open(os.path.join(rd, "driver.log"), "a", buffering=1)
def L(*a):
    s = f"{time.strftime('%H:%M:%S')} " + " ".join(str(x) for x in a); print(s, flush=True); dl.write(s + "\n")
ad = AdminClient({"bootstrap.servers": BOOT})
for f in ad.create_topics([NewTopic(topic, 6, 1)]).values(): f.result()
L("topic", topic, "group", group, "protocol", proto, "membership", memb)
insts = ["inst-a", "inst-b"]; procs = {}; starts = {i: 0 for i in insts}
def start(i):
    starts[i] += 1
    iid = i if memb == "static" else "-"
    err = open(os.path.join(rd, f"{i}.log"), "a")
    err.write(f"===== start #{starts[i]} {time.strftime('%H:%M:%S')} =====\n"); err.flush()
    procs[i] = subprocess.Popen([PY, os.path.join(HERE, "consumer.py"), BOOT, topic, group, proto, iid, os.path.join(rd, f"{i}.log")],
                                stdout=err, stderr=err)
    L("started", i, "pid", procs[i].pid)
def check():
    r = subprocess.run([PY, os.path.join(HERE, "check.py"), BOOT, topic, group], capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-500:]}
def kafka_tool(args, fn):
    r = subprocess.run(["java", "-Xmx256m", "-cp", f"{LIBS}/*", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                        "--bootstrap-server", BOOT] + args, capture_output=True, text=True, timeout=120)
    open(os.path.join(rd, fn), "w").write(r.stdout + r.stderr); return r.stdout + r.stderr
for i in insts: start(i)
time.sleep(3)
prod = subprocess.Popen([PY, os.path.join(HERE, "producer.py"), BOOT, topic, str(feed), "1000"], stdout=open(os.path.join(rd, "producer.log"), "w"), stderr=subprocess.STDOUT)
L("producer pid", prod.pid)
t0 = time.time(); kills = 0; k = 0
while k < nkills:
    time.sleep(max(0, t0 + 10 * (k + 1) - time.time()))
    victim = insts[k % 2]; k += 1
    procs[victim].send_signal(signal.SIGKILL); procs[victim].wait(); kills += 1
    L("SIGKILL", victim, "pid", procs[victim].pid, "kill#", kills)
    time.sleep(1); start(victim)
prod.wait(); L("producer done", open(os.path.join(rd, "producer.log")).read().strip())
feed_end = time.time(); res = None
while True:
    res = check(); tot = sum(v["lag"] for v in res.values()) if "error" not in res else None
    L("lag", int(time.time() - feed_end), "s after feed:", "total", tot, json.dumps(res))
    if tot == 0: drained = round(time.time() - feed_end); break
    if time.time() - feed_end >= wait: drained = None; break
    time.sleep(10)
kafka_tool(["--describe", "--group", group, "--members", "--verbose"], "describe_members.txt")
kafka_tool(["--describe", "--group", group, "--state", "--verbose"], "describe_state.txt")
kafka_tool(["--describe", "--group", group, "--offsets"], "describe_offsets.txt")
stuck = sorted(int(p) for p, v in res.items() if v["lag"] > 0) if "error" not in res else "?"
summary = {"run": name, "protocol": proto, "membership": memb, "kills": kills,
           "produced": json.loads(open(os.path.join(rd, "producer.log")).read().strip().splitlines()[-1])["produced"],
           "stuck_partitions": stuck, "total_lag": tot, "max_lag": max(v["lag"] for v in res.values()) if "error" not in res else None,
           "secs_to_drain": drained}  # first lag check (every 10 s) that saw 0
L("SUMMARY", json.dumps(summary)); open(os.path.join(rd, "summary.json"), "w").write(json.dumps(summary) + "\n")
for i, p in procs.items():
    p.send_signal(signal.SIGKILL); p.wait(); L("stopped", i, "pid", p.pid)
