#!/usr/bin/env bash
# Throwaway single-node KRaft broker (Kafka 4.4.0) on 127.0.0.1:39092 (controller :39093),
# config as services/verdict-cli/src/broker.rs server_properties(). usage: broker.sh start|stop
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); B=$HERE/broker; L=$HOME/.local/share/verdict/kafka-4.4.0/libs
case "${1:-}" in
start)
  mkdir -p "$B/logs"
  sed "s#@LOGS@#$B/logs#" "$HERE/evidence/server.properties" > "$B/server.properties"
  cp "$HERE/evidence/log4j2.properties" "$B/"
  java -cp "$L/*" kafka.tools.StorageTool format -t repro848-cluster-0000001 -c "$B/server.properties" >/dev/null
  nohup java -Xmx512m -Xms256m -XX:+UseG1GC -Dlog4j2.configurationFile="$B/log4j2.properties" \
    -cp "$L/*" kafka.Kafka "$B/server.properties" > "$B/broker.log" 2>&1 &
  echo $! > "$B/pid"; echo "broker pid $(cat "$B/pid")";;
stop)
  P=$(cat "$B/pid"); kill "$P"; while kill -0 "$P" 2>/dev/null; do sleep 1; done; rm -rf "$B"; echo stopped;;
*) echo "usage: $0 start|stop"; exit 2;;
esac
