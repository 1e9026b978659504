#!/usr/bin/env bash
# A real SLURM on this one machine, and semmae's SLURM path tested against it (`make test-slurm`; as root).
#  1. installs Debian's slurm-wlm and munge if missing; writes a private munge key and a single-node slurm.conf
#     (this machine's CPUs and memory, free ports, every file under $WORK: /etc is not touched); starts munged (as
#     the munge user), slurmctld and slurmd;
#  2. sweep: `semmae-pretrain -m hydra/launcher=slurm` over two mask ratios (2 SLURM array tasks, submitit), waits,
#     checks each job's results.json, checkpoints and SLURM job id;
#  3. requeue: a 2-task DDP job (trainer=ddp on CPU processes, ranks from srun); once it has trained an epoch it gets
#     `scancel --signal=USR2` (what SLURM sends before a time limit); it must save last.ckpt, requeue itself, run
#     again (SLURM_RESTART_COUNT=1), resume from that checkpoint at the same step and finish;
#  4. stops the daemons by their PIDs (also on failure) and removes $WORK unless KEEP=1.
# Env: PYTHON (default .venv/bin/python), WORK (default a new /tmp/semmae-slurm.*), KEEP=1 to keep it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the jobs run in other directories: a relative path would not resolve
START=$(date +%s)
log() { printf '[slurm-test %4ds] %s\n' $(( $(date +%s) - START )) "$*"; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts munged, slurmctld and slurmd)"
[ -x "$PY" ] || die "no python at $PY (run make setup, or set PYTHON=)"
"$PY" -c "import hydra_plugins.hydra_submitit_launcher" 2>/dev/null \
  || die "hydra-submitit-launcher is not installed in $PY's environment: pip install -e '.[slurm]'"

# --- 1. a single-node cluster -----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
log "$(slurmctld -V), $(munged -V 2>&1 | head -1)"

WORK=${WORK:-$(mktemp -d /tmp/semmae-slurm.XXXXXX)}
mkdir -p "$WORK"/{munge,state,spool,log,run}
chmod 755 "$WORK"
export SLURM_CONF=$WORK/slurm.conf
PIDS=()
drain_queue() {  # wait (at most $1 s) until no job is left, not even COMPLETING
  for _ in $(seq "$1"); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && return 0
    sleep 1
  done
  return 1
}
cleanup() {
  local rc=$?
  if [ -s "$WORK/slurmctld.pid" ] && ! drain_queue 2; then
    scancel --full "$(squeue -h -o %i | head -1)" 2>/dev/null || true
    scancel -u root 2>/dev/null || true
    drain_queue 30 || log "jobs still listed after scancel: $(squeue -h -o '%i=%T' | tr '\n' ' ')"
  fi
  for pidfile in "$WORK/slurmd.pid" "$WORK/slurmctld.pid" "$WORK/munge/munged.pid"; do
    if [ -s "$pidfile" ]; then
      pid=$(cat "$pidfile")
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do  # until it has exited (a zombie left for init counts as exited)
          state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
          [ "$state" = gone ] || [ "$state" = Z ] && break
          sleep 0.2
        done
        log "stopped $(basename "$pidfile" .pid) (pid $pid)"
      fi
    fi
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # job processes of this cluster that outlived slurmd (they run in $WORK/run): by PID
  for pid in $(pgrep -x slurmstepd; pgrep -x srun); do
    case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in "$WORK"/*) kill -9 "$pid" 2>/dev/null || true;; esac
  done
  if [ $rc -ne 0 ]; then
    for f in "$WORK"/log/*.log; do [ -f "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }; done
  fi
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  log "$([ $rc -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START )) s"
}
trap cleanup EXIT

# munge: a private 1 KiB key, socket and pid file under $WORK, the daemon running as the munge user
head -c 1024 /dev/urandom > "$WORK/munge/munge.key"
chown -R munge:munge "$WORK/munge"
chmod 755 "$WORK/munge"  # munged wants the socket directory searchable by all
chmod 400 "$WORK/munge/munge.key"
SOCK=$WORK/munge/munge.socket
runuser -u munge -- munged --socket="$SOCK" --key-file="$WORK/munge/munge.key" --pid-file="$WORK/munge/munged.pid" \
  --log-file="$WORK/munge/munged.log" --seed-file="$WORK/munge/munged.seed"
munge --socket="$SOCK" -n | unmunge --socket="$SOCK" >/dev/null || die "munge round trip failed"
log "munged up (pid $(cat "$WORK/munge/munged.pid"))"

read -r CTLD_PORT SLURMD_PORT < <("$PY" -c "
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(('', 0))
print(*[s.getsockname()[1] for s in socks])")
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat > "$SLURM_CONF" <<EOF
ClusterName=semmae-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=test Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -i
slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || die "node not idle after 60 s (state: ${state:-none})"
log "slurmctld (pid $(cat "$WORK/slurmctld.pid")) and slurmd (pid $(cat "$WORK/slurmd.pid")) up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"

# --- 2. a sweep of two jobs through hydra/launcher=slurm ---------------------------------------------------------
cd "$WORK/run"
export WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
TINY=(backbone.embed_dim=32 backbone.depth=2 backbone.num_heads=2 backbone.decoder_embed_dim=16
      backbone.decoder_depth=1 backbone.decoder_num_heads=2)  # a small ViT: this checks the plumbing, not the model
SMALL=("${TINY[@]}" dataset.train_subset=1024 dataset.val_subset=256 dataset.batch_size=128 dataset.eval_batch_size=256
       logger=csv callbacks.reconstruction.num_images=2 hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=15)

# Runs a Hydra multirun in the background, logging every change of its SLURM jobs' states, until it ends.
# $1: a name; then the overrides. Sets JOB_IDS (space separated) and returns the multirun's exit status.
watch_multirun() {
  local name=$1; shift
  "$PY" -m semmae.pretrain -m hydra/launcher=slurm "hydra.sweep.dir=$WORK/run/$name" "$@" \
    > "$WORK/log/$name.out" 2>&1 &
  local pid=$! last="" now
  PIDS+=("$pid")
  while kill -0 "$pid" 2>/dev/null; do
    now=$(squeue -h -o '%i=%T%R' 2>/dev/null | sort | tr '\n' ' ' || true)
    now=${now//None/}
    if [ "$now" != "$last" ]; then log "  squeue: ${now:-(empty)}"; last=$now; fi
    [ -n "${ON_POLL:-}" ] && $ON_POLL
    sleep 1
  done
  wait "$pid" || return
  drain_queue 60 || die "jobs still listed 60 s after the multirun ended: $(squeue -h -o '%i=%T' | tr '\n' ' ')"
}

log "sweep: semmae-pretrain -m hydra/launcher=slurm masking.mask_ratio=0.5,0.75 (2 array tasks, 1 CPU each)"
watch_multirun sweep masking.mask_ratio=0.5,0.75 trainer.max_epochs=2 "${SMALL[@]}" \
  || { tail -n 30 "$WORK/log/sweep.out"; die "the sweep failed"; }
"$PY" - "$WORK/run/sweep" <<'PY' || die "sweep outputs are wrong"
import json, sys
from pathlib import Path
import yaml
sweep = Path(sys.argv[1])
for job, ratio in (("0", 0.5), ("1", 0.75)):
    d = sweep / job
    res = json.loads((d / "results.json").read_text())
    hydra = yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]
    ckpts = sorted(p.name for p in (d / "checkpoints").glob("*.ckpt"))
    assert res["config"]["masking"]["mask_ratio"] == ratio, res["config"]["masking"]
    assert res["global_step"] == 2 * (1024 // 128) and res["epochs"] == 2, (res["global_step"], res["epochs"])
    assert ckpts == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"], ckpts
    assert Path(res["checkpoint"]).is_file(), res["checkpoint"]
    slurm_id = hydra["job"]["id"]
    assert "_" in slurm_id and slurm_id.split("_")[1] == job, slurm_id  # <array job>_<task>
    m = res["metrics"]
    print(f"  job {job} (SLURM {slurm_id}): mask_ratio={ratio} steps={res['global_step']} "
          f"probe_acc={m['val/online_probe_acc']:.3f} val_loss={m['val/loss']:.4f} ckpts={ckpts} "
          f"wall={res['wall_time_s']:.0f}s")
PY
log "sweep: both jobs finished with results.json and checkpoints"

# --- 3. requeue: a 2-rank DDP job signalled mid-run must save, requeue, resume and finish ------------------------
RQ=$WORK/run/requeue
STEPS_PER_EPOCH=$(( 4096 / 2 / 64 ))  # per rank: train_subset / world size / batch
signal_once() {  # called every second by watch_multirun: after the first epoch's checkpoint, send the signal
  if [ -n "${SIGNALLED:-}" ]; then
    # SLURM holds a requeued job back for a couple of minutes (BeginTime); release it now to save the wait
    if [ -z "${RELEASED:-}" ] && squeue -h -j "$SIGNALLED" -o '%T %r' 2>/dev/null | grep -q "PENDING BeginTime"; then
      scontrol update JobId="$SIGNALLED" StartTime=now && log "  requeued job $SIGNALLED held until BeginTime: released"
      RELEASED=1
    fi
    return 0
  fi
  [ -f "$RQ/0/checkpoints/epoch_000.ckpt" ] || return 0
  local jid
  jid=$(squeue -h -t RUNNING -o '%i' | head -1)
  [ -n "$jid" ] || return 0
  log "  epoch 0 checkpointed; scancel --signal=USR2 $jid (the signal SLURM sends before a time limit)"
  scancel --signal=USR2 "$jid"
  SIGNALLED=$jid
}
log "requeue: trainer=ddp trainer.accelerator=cpu trainer.devices=2 (2 SLURM tasks = 2 ranks), 3 epochs of $STEPS_PER_EPOCH steps"
ON_POLL=signal_once watch_multirun requeue trainer=ddp trainer.accelerator=cpu trainer.devices=2 trainer.max_epochs=3 \
  "${TINY[@]}" dataset.train_subset=4096 dataset.val_subset=256 dataset.batch_size=64 dataset.eval_batch_size=128 \
  logger=csv trainer.log_every_n_steps=1 callbacks.reconstruction.num_images=2 callbacks.requeue.check_every_n_steps=2 \
  hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=15 \
  || { tail -n 30 "$WORK/log/requeue.out"; die "the requeued job failed"; }
[ -n "${SIGNALLED:-}" ] || die "the job ended before it could be signalled"
"$PY" - "$RQ" "$SIGNALLED" "$STEPS_PER_EPOCH" <<'PY' || die "requeue outputs are wrong"
import csv, json, re, sys
from pathlib import Path
run, jid, per_epoch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
logs = {p.name: p.read_text(errors="replace") for p in (run / ".submitit" / jid).glob("*_log.*")}
text = "\n".join(logs.values())
requeued = re.search(r"Requeued SLURM job (\S+) at step (\d+); it resumes from (\S+)", text)
assert requeued, "no 'Requeued SLURM job' line in the job logs"
step = int(requeued.group(2))
assert per_epoch < step < 3 * per_epoch, step
resumed = re.search(r"requeued job \(restart 1\): resuming from (\S+)", text)
assert resumed and resumed.group(1).endswith("checkpoints/last.ckpt"), "the requeued run did not resume from last.ckpt"
for rank in (0, 1):  # ranks came from srun (SLURM_PROCID), in both runs
    assert len(re.findall(rf"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2", text)) == 2, f"rank {rank} not started twice"
res = json.loads((run / "0" / "results.json").read_text())
assert res["global_step"] == 3 * per_epoch and res["epochs"] == 3, (res["global_step"], res["epochs"])
assert not (run / "0" / "failed.json").exists()
# the second run's metrics (csv version_1) start where the first stopped
versions = sorted((run / "0" / "csv").glob("version_*"))
assert len(versions) == 2, versions
first_step = min(int(r["step"]) for r in csv.DictReader(open(versions[1] / "metrics.csv")) if r["step"])
assert first_step >= step, (first_step, step)
ckpts = sorted(p.name for p in (run / "0" / "checkpoints").glob("*.ckpt"))
assert ckpts == ["epoch_000.ckpt", "epoch_001.ckpt", "epoch_002.ckpt", "last.ckpt"], ckpts
print(f"  SLURM job {jid}: signalled, saved last.ckpt and requeued at step {step}; run 2 (SLURM_RESTART_COUNT=1) "
      f"resumed from it (first logged step {first_step}) and finished at step {res['global_step']} "
      f"(3 epochs x {per_epoch}); probe_acc={res['metrics']['val/online_probe_acc']:.3f}; ckpts={ckpts}")
PY
log "requeue: saved, requeued, resumed and finished"
