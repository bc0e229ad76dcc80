#!/bin/bash
# The by-hand measurements of docs/performance.md (2026-12-01), kept as they
# were run. Usage: run.sh ROUNDS RUNTIME "TARGETS" "WORKLOADS"
#   TARGETS: plain, qsd, or name=ENV;ARGS (ENV for the server, ARGS with commas
#   for spaces; a name starting with mw raises fs.fuse.max_pages_limit to 1024
#   for that server's mount and restores 256). An ENV entry SKIP=!wl!wl skips
#   those workloads for the target. WORKLOADS: rr1 rr4 rr16 rr32 rw1 rw4 rw16
#   rw32 sr16 sw16 ddr ddw conv (see run_wl). Needs root, fio, qemu-img,
#   qemu-storage-daemon, a random image at $D/disk.raw and, for conv, a 4 GiB
#   random source at /dev/shm/fuse-export-lab-source.raw. uring targets need
#   enable_uring=Y (run it under the with_enable_uring example).
# FX_READV_FLAGS / FX_READV_PIN / FX_URING_NOPIN were read only by temporary
# builds for the experiments; the committed server ignores them.
set -u
trap "sysctl -q -w fs.fuse.max_pages_limit=256" EXIT
D=${D:-target/exp}
BIN=${BIN:-target/release/fuse-export}
IMG=$D/disk.raw
MNT=$D/mnt.img
ROUNDS=$1; RT=$2; TARGETS=$3; WLS=$4
OUT=$D/results-$(date +%H%M%S).txt
echo "# $(uptime)" | tee -a $OUT
start_server() { # name envs args
  local envs="$1" args="$2"
  rm -f $D/pid
  env $envs RUST_LOG=info $BIN --image $IMG --mount $MNT --pidfile $D/pid $args >$D/server.log 2>&1 &
  SPID=$!
  for i in $(seq 100); do [ -s $D/pid ] && return 0; sleep 0.1; done
  echo "server failed"; cat $D/server.log; return 1
}
stop_server() { kill -TERM $SPID; wait $SPID 2>/dev/null; }
start_qsd() {
  touch $MNT
  qemu-storage-daemon --blockdev node-name=file0,driver=file,filename=$IMG,aio=io_uring,cache.direct=on \
    --blockdev node-name=fmt0,driver=raw,file=file0 \
    --export type=fuse,id=exp0,node-name=fmt0,mountpoint=$MNT,writable=on >$D/qsd.log 2>&1 &
  SPID=$!
  for i in $(seq 100); do grep -q " $MNT fuse" /proc/mounts && return 0; sleep 0.1; done
  echo qsd failed; return 1
}
cpu() { if [ $name = plain ]; then echo 0; else awk '{print $14+$15}' /proc/$SPID/stat; fi; }
run_wl() { # wl path
  local wl=$1 p=$2
  case $wl in
    rr1) a="--rw=randread --bs=4k --iodepth=1";;
    rr32) a="--rw=randread --bs=4k --iodepth=32";;
    rw1) a="--rw=randwrite --bs=4k --iodepth=1";;
    rw32) a="--rw=randwrite --bs=4k --iodepth=32";;
    rr4) a="--rw=randread --bs=4k --iodepth=4";;
    rr16) a="--rw=randread --bs=4k --iodepth=16";;
    rw4) a="--rw=randwrite --bs=4k --iodepth=4";;
    rw16) a="--rw=randwrite --bs=4k --iodepth=16";;
    sr16) a="--rw=read --bs=1M --iodepth=16";;
    sw16) a="--rw=write --bs=1M --iodepth=16";;
    ddr) v=$(dd if=$p of=/dev/null bs=1M count=1024 iflag=direct 2>&1 | awk '/copied/{print $(NF-1)*($NF=="GB/s"?1000:1)}'); echo $v; return;;
    ddw) v=$(dd if=/dev/zero of=$p bs=1M count=1024 oflag=direct conv=notrunc 2>&1 | awk '/copied/{print $(NF-1)*($NF=="GB/s"?1000:1)}'); echo $v; return;;
    conv) s=$(date +%s.%N); qemu-img convert -n --image-opts driver=raw,size=4294967296,file.driver=file,file.filename=/dev/shm/fuse-export-lab-source.raw -O raw -t none $p; e=$(date +%s.%N); echo "$e $s" | awk '{printf "%.3f\n",$1-$2}'; return;;
  esac
  fio --name=x --filename=$p --direct=1 --ioengine=io_uring $a --time_based --runtime=$RT --numjobs=1 --randrepeat=0 --norandommap --fallocate=none --output-format=json --output=$D/fio.json >/dev/null 2>&1
  python3 -c "import json;j=json.load(open('$D/fio.json'))['jobs'][0];print(int(j['read']['iops']+j['write']['iops']))"
}
for r in $(seq $ROUNDS); do
  for t in $TARGETS; do
    name=${t%%=*}; spec=${t#*=}; envs=${spec%%;*}; args=${spec#*;}
    args=${args//,/ }
    case $name in
      plain) path=$IMG;;
      qsd) start_qsd || continue; path=$MNT;;
      mw*) sysctl -q -w fs.fuse.max_pages_limit=1024; start_server "$envs" "$args"; ok=$?; sysctl -q -w fs.fuse.max_pages_limit=256; [ $ok = 0 ] || continue; path=$MNT;;
      *) start_server "$envs" "$args" || continue; path=$MNT;;
    esac
    for w in $WLS; do
      if [ $name != plain ]; then case "$spec" in *"!$w"*) continue;; esac; fi
      c0=$(cpu); v=$(run_wl $w $path); c1=$(cpu)
      echo "$r $name $w $v $((c1-c0))" | tee -a $OUT
    done
    [ $name != plain ] && stop_server
    [ $name = qsd ] && sleep 0.5
  done
done
echo "# $(uptime)" | tee -a $OUT
echo $OUT
