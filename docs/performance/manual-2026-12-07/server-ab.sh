#!/bin/bash
# By-hand A/B of server options (2026-12-07: --uring-wait-batch,
# --uring-busy-poll); SERVER=PATH times another build of fuse-export.
# $1: the server's options (e.g. "--transport uring
# --uring-busy-poll 50"), or `plain` for fio on the image itself; $2: fio
# options. Run from anywhere as root, inside `cargo run -p fuse-dev
# --example with_enable_uring -- ...` for uring; needs target/exp/disk.raw
# (e.g. a symlink to the lab's image) and a release build. Prints IOPS,
# p50, and the server's context switches and CPU time over 3 s of the 5 s
# run.
set -u
cd "$(dirname "$0")/../../.."
D=target/exp; IMG=$D/disk.raw; MNT=$D/mnt.img
[ -e $MNT ] || touch $MNT
if [ "$1" = plain ]; then
  fio --name=x --filename=$IMG --direct=1 --ioengine=io_uring $2 --time_based --runtime=5 --numjobs=1 --randrepeat=0 --norandommap --fallocate=none --output-format=json --output=$D/fio-p.json >/dev/null 2>&1
  python3 -c "
import json;j=json.load(open('$D/fio-p.json'))['jobs'][0]
k='read' if j['read']['iops']>0 else 'write'
print('plain', '$2', 'iops',int(j[k]['iops']), 'p50', int(j[k]['clat_ns']['percentile']['50.000000']/1000),'us')"
  exit
fi
rm -f $D/pid
RUST_LOG=info ${SERVER:-target/release/fuse-export} --image $IMG --mount $MNT --pidfile $D/pid $1 >$D/server.log 2>&1 &
SPID=$!
for i in $(seq 100); do [ -s $D/pid ] && break; sleep 0.1; done
fio --name=x --filename=$MNT --direct=1 --ioengine=io_uring $2 --time_based --runtime=5 --numjobs=1 --randrepeat=0 --norandommap --fallocate=none --output-format=json --output=$D/fio-p.json >/dev/null 2>&1 &
FPID=$!
sleep 1
perf stat -p $SPID -e context-switches,cpu-clock -x, -o $D/perf-p.txt -- sleep 3
wait $FPID
kill -TERM $SPID; wait $SPID
python3 -c "
import json;j=json.load(open('$D/fio-p.json'))['jobs'][0]
k='read' if j['read']['iops']>0 else 'write'
print('$1', '$2', 'iops',int(j[k]['iops']), 'p50', int(j[k]['clat_ns']['percentile']['50.000000']/1000),'us', end=' ')"
grep -v "^#" $D/perf-p.txt | grep -v "^$" | cut -d, -f1,3 | tr '\n' ' '; echo
