#!/usr/bin/env bash
# MPI training across "nodes" on this machine (issue 11, item 10), for .ci/run: two
# network namespaces, each with its own address on a veth pair (no route out, loopback
# and the pair only), stand for two machines; Open MPI starts its daemon in each through
# an rsh agent that enters the namespace, so ranks on different "nodes" talk over TCP.
#  1. train 4 ranks (2 per node, dp 4, ZeRO 2) across the nodes: every step's loss equals
#     the same job on one node (relative 1e-5);
#  2. kill every process of node 1 mid-run: the job ends (no hang), naming the lost ranks
#     2 and 3, and the run resumes from its last checkpoint on the remaining node's 2 ranks.
# Needs root (namespaces); says SKIPPED and exits 0 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "SKIPPED: MPI across network namespaces: $1"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v mpirun >/dev/null || skip "mpirun not found"
command -v ip >/dev/null && command -v unshare >/dev/null || skip "needs ip (iproute2) and unshare"

nodes=(hyp-node0 hyp-node1)
addr=(10.77.0.1 10.77.0.2)
work=$(mktemp -d)
cleanup() {
  for ns in "${nodes[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for ns in "${nodes[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
ip netns add "${nodes[0]}" 2>/dev/null || skip "ip netns add failed (no CAP_SYS_ADMIN here)"
ip netns add "${nodes[1]}"
ip link add hyp-veth0 type veth peer name hyp-veth1
for i in 0 1; do
  ns=${nodes[$i]}
  ip link set "hyp-veth$i" netns "$ns"
  ip -n "$ns" link set "hyp-veth$i" name hypnet
  ip -n "$ns" addr add "${addr[$i]}/24" dev hypnet
  ip -n "$ns" link set hypnet up
  ip -n "$ns" link set lo up
done

# Open MPI's remote shell: "host" 10.77.0.N+1 is namespace hyp-nodeN, with its own hostname.
cat > "$work/nsrsh" <<'AGENT'
#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done
case "$1" in
  10.77.0.1) ns=hyp-node0 ;; 10.77.0.2) ns=hyp-node1 ;; *) echo "nsrsh: unknown host $1" >&2; exit 1 ;;
esac
shift
exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns; $*"
AGENT
chmod +x "$work/nsrsh"
# mpirun itself runs on node 0.
on_node0() { ip netns exec "${nodes[0]}" unshare --uts /bin/sh -c 'hostname hyp-node0; exec "$@"' sh "$@"; }
mca=(--allow-run-as-root --oversubscribe --mca plm_rsh_agent "$work/nsrsh" --mca plm_rsh_no_tree_spawn 1
     --mca oob_tcp_if_include hypnet --mca btl tcp,self,vader --mca btl_tcp_if_include hypnet)

cargo build -q -p hyperion --features mpi
hyp=$PWD/target/debug/hyperion
common=(train --preset tiny --set "data.dir=\"$work/data\"" --set "data.inputs=[\"$PWD/data/shakespeare/sonnets.txt\"]" --set 'data.split="tail"'
        --set log.progress=false --set log.peak_flops=1e11 --set parallel.dp=4 --set parallel.zero=2 --set train.batch_size=4 --sample-tokens 0)

echo "== where the ranks run"
on_node0 mpirun "${mca[@]}" --host "${addr[0]}:2,${addr[1]}:2" -np 4 sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname)"' | sort | tee "$work/where.log"
grep -q "rank 3 on hyp-node1" "$work/where.log" || { echo "error: rank 3 is not on node 1" >&2; exit 1; }

echo "== 4 ranks across 2 nodes (TCP between them) equal 4 ranks on one node"
"$hyp" data prepare --input data/shakespeare/sonnets.txt --tokenizer char --split tail --out "$work/data" > /dev/null
on_node0 mpirun "${mca[@]}" --host "${addr[0]}:4" -np 4 "$hyp" "${common[@]}" --set train.steps=20 --out "$work/one" > "$work/one.log" 2>&1 \
  || { cat "$work/one.log"; echo "error: the one-node run failed" >&2; exit 1; }
on_node0 mpirun "${mca[@]}" --host "${addr[0]}:2,${addr[1]}:2" -np 4 "$hyp" "${common[@]}" --set train.steps=20 --out "$work/two" > "$work/two.log" 2>&1 \
  || { cat "$work/two.log"; echo "error: the two-node run failed" >&2; exit 1; }
python3 - "$work/one/metrics.jsonl" "$work/two/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
la = [r["train_loss"] for r in a if "train_loss" in r]; lb = [r["train_loss"] for r in b if "train_loss" in r]
assert len(la) == len(lb) == 20, (len(la), len(lb))
worst = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
assert worst <= 1e-5, worst
print(f"20 steps, losses equal to the one-node job (worst relative difference {worst:.1e})")
PY
for f in "$work"/one/checkpoints/step-00000020/*.safetensors; do
  cmp "$f" "$work/two/checkpoints/step-00000020/$(basename "$f")" || { echo "error: $(basename "$f") differs between one node and two" >&2; exit 1; }
done
echo "final checkpoint files bitwise equal"

echo "== node 1 dies mid-run (every process in its namespace SIGKILLed)"
on_node0 mpirun "${mca[@]}" --host "${addr[0]}:2,${addr[1]}:2" -np 4 "$hyp" "${common[@]}" --set train.steps=100000 \
  --set checkpoint.interval=10 --out "$work/kill" > "$work/kill.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -e "$work/kill/checkpoints/latest" ] && break; sleep 0.1; done
sleep 0.5
start=$(date +%s%N)
ip netns pids "${nodes[1]}" | xargs -r kill -9
set +e; wait "$job"; rc=$?; set -e
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$rc" -ne 0 ] || { cat "$work/kill.log"; echo "error: the job exited 0 after losing a node" >&2; exit 1; }
grep -q "rank 2: SILENT" "$work/kill.log" && grep -q "rank 3: SILENT" "$work/kill.log" \
  && ! grep -q "rank [01]: SILENT" "$work/kill.log" \
  || { cat "$work/kill.log"; echo "error: the diagnosis does not name exactly ranks 2 and 3 as lost" >&2; exit 1; }
echo "the job ended ${took} ms after node 1 died (exit $rc), naming the lost ranks:"
grep -E "may be lost|SILENT" "$work/kill.log" | sort -u
last=$(sed 's/^step-0*//' "$work/kill/checkpoints/latest")
target=$((last + 20))
echo "== resumed from step $last on node 0's 2 ranks"
on_node0 mpirun "${mca[@]}" --host "${addr[0]}:2" -np 2 "$hyp" train --resume "$work/kill" --set parallel.dp=2 --set "train.steps=$target" \
  --set log.progress=false --sample-tokens 0 > "$work/resume.log" 2>&1 \
  || { cat "$work/resume.log"; echo "error: the resume on the remaining node failed" >&2; exit 1; }
grep -q "resumed .* at step $last " "$work/resume.log" && grep -q "done: step $target" "$work/resume.log" \
  || { cat "$work/resume.log"; echo "error: the resume did not continue from step $last to $target" >&2; exit 1; }
grep "keeping the global batch" "$work/resume.log" || true
echo "MPI across network namespaces: 3 passed, 0 failed"
