#!/bin/bash
set -u
cd /work/main
D=target/exp; IMG=$D/disk.raw; MNT=$D/mnt.img
rm -f $D/pid
RUST_LOG=info target/release/fuse-export --image $IMG --mount $MNT --pidfile $D/pid --transport uring --uring-wait-batch $1 >$D/server.log 2>&1 &
SPID=$!
for i in $(seq 100); do [ -s $D/pid ] && break; sleep 0.1; done
fio --name=x --filename=$MNT --direct=1 --ioengine=io_uring $2 --time_based --runtime=5 --numjobs=1 --randrepeat=0 --norandommap --fallocate=none --output-format=json --output=$D/fio-b.json >/dev/null 2>&1 &
FPID=$!
sleep 1
perf stat -p $SPID -e context-switches,cpu-clock -x, -o $D/perf-b.txt -- sleep 3
wait $FPID
kill -TERM $SPID; wait $SPID
python3 -c "import json;j=json.load(open('$D/fio-b.json'))['jobs'][0];print('batch $1', '$2', 'iops',int(j['read']['iops']+j['write']['iops']))"
grep -v "^#" $D/perf-b.txt | grep -v "^$" | cut -d, -f1,3
