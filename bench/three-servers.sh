# Sourced by bench scripts: three colony servers on loopback, server i (0..2) with gossip on
# port 18301+i+OFFSET, RPC on 18310+10i+OFFSET, HTTP on 18500+i+OFFSET, gRPC 12379+i+OFFSET.
# start_three_servers BIN DIR OFFSET [AGENT OPTIONS...]: starts them (logs in DIR/sI.log),
# appends their pids to the array `pids`, waits for a leader, and sets `leader_index`.
start_three_servers() {
  local bin=$1 dir=$2 offset=$3
  shift 3
  local i j leader=""
  for i in 0 1 2; do
    local joins=()
    for j in 0 1 2; do [ "$j" != "$i" ] && joins+=(--retry-join "127.0.0.1:$((18301 + j + offset))"); done
    "$bin" agent --server --bootstrap-expect 3 --node "s$i" \
      --bind "127.0.0.1:$((18301 + i + offset))" --rpc-addr "127.0.0.1:$((18310 + 10 * i + offset))" \
      --http-addr "127.0.0.1:$((18500 + i + offset))" --grpc-addr "127.0.0.1:$((12379 + i + offset))" \
      --retry-interval 200ms --data-dir "$dir/s$i" "${joins[@]}" "$@" >"$dir/s$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 300); do
    leader=$(curl -sf "http://127.0.0.1:$((18500 + offset))/v1/status/leader" | tr -d '"' || true)
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "no leader within 30 s" >&2; return 1; }
  # The leader's RPC address names the server.
  leader_index=$(( (${leader##*:} - 18310 - offset) / 10 ))
}
