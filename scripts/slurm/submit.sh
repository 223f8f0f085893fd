#!/bin/bash
# sbatch template: one multi-GPU run of one experiment on one node (DDP through accelerate launch).
#   sbatch --partition=<p> --account=<a> scripts/slurm/submit.sh +experiment=glue_sst2 method=lora seed=1
#   GPUS_PER_NODE=1 sbatch --gpus-per-node=1 scripts/slurm/submit.sh +experiment=glue_sst2
# Every argument is passed to run.py. Never pass --multirun here (each rank would run the whole sweep,
# accelerate#582); sweep with `python run.py --multirun ... hydra/launcher=slurm_a100` instead.
# Requeue-safe: the output dir depends on SLURM_JOB_ID, and trainer.resume=true continues from
# the newest good <output_dir>/checkpoints/step_<N> after a preemption.
#SBATCH --job-name=qpeft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=12:00:00
#SBATCH --output=logs/slurm/%x-%j.out
#SBATCH --requeue
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-4}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/../..}"
source .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if [ "$GPUS_PER_NODE" -gt 1 ]; then
    LAUNCH=(accelerate launch --config_file conf/accelerate/multi_gpu_4xA100.yaml --num_processes "$GPUS_PER_NODE")
else
    LAUNCH=(accelerate launch --config_file conf/accelerate/single_gpu.yaml --num_processes 1)
fi
srun "${LAUNCH[@]}" run.py trainer.resume=true "$@"
