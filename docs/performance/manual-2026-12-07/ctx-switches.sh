#!/bin/bash
# prof.sh TRANSPORT WORKLOAD-ARGS: server on the lab image, fio 6 s, perf stat over 4 s of it
set -u
cd /work/main
D=target/exp; IMG=$D/disk.raw; MNT=$D/mnt.img
rm -f $D/pid
RUST_LOG=info target/release/fuse-export --image $IMG --mount $MNT --pidfile $D/pid --transport $1 >$D/server.log 2>&1 &
SPID=$!
for i in $(seq 100); do [ -s $D/pid ] && break; sleep 0.1; done
fio --name=x --filename=$MNT --direct=1 --ioengine=io_uring $2 --time_based --runtime=6 --numjobs=1 --randrepeat=0 --norandommap --fallocate=none --output-format=json --output=$D/fio-$1.json >/dev/null 2>&1 &
FPID=$!
sleep 1
perf stat -a -e context-switches,cpu-migrations,cpu-clock -x, -o $D/perf-sys-$1.txt -- sleep 4 &
perf stat -p $SPID -e context-switches,cpu-clock -x, -o $D/perf-srv-$1.txt -- sleep 4
wait $FPID
kill -TERM $SPID; wait $SPID
python3 -c "import json;j=json.load(open('$D/fio-$1.json'))['jobs'][0];print('$1 iops',int(j['read']['iops']+j['write']['iops']))"
echo "system:"; grep -v "^#" $D/perf-sys-$1.txt | grep -v "^$"
echo "server:"; grep -v "^#" $D/perf-srv-$1.txt | grep -v "^$"
