#!/usr/bin/env bash
# SLURM launcher: one torchrun per node, rendezvous on the first node.
#   sbatch --nodes=2 --gres=gpu:8 tools/slurm_train.sh configs/voc_cac.yaml [key=value ...]
#SBATCH --job-name=seg_ssl
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
# pre-emption on a partition that requeues puts the job back in the queue; it runs this same
# command again, which resumes from latest.pth (resume=auto); the log is appended to, not replaced
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# SIGTERM (pre-emption, or --signal above before the time limit) makes every rank finish its step
# and rank 0 write latest.pth; resubmitting the same command resumes from it.
srun --kill-on-bad-exit=1 torchrun --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_HOST:29500" \
    tools/train.py "$@"
