#!/usr/bin/env bash
# Submit a training run to a Ray cluster through its Jobs API and follow its log.
#
#   ray dashboard cluster/aws.yaml &          # SSH tunnel to the head's 127.0.0.1:8265
#   cluster/submit_job.sh configs/cartpole_ppo.yaml [--set key=value ...]
#
# Run from the repository root. The run folder goes to ~/distributed-reptile-runs/<name> on the
# head node (the '~' is expanded there): copy it back with `ray rsync-down`.
set -euo pipefail

CONFIG=${1:-configs/smoke.yaml}
shift || true
ADDRESS=${RAY_JOB_ADDRESS:-http://127.0.0.1:8265}
# the cluster's token: from ~/.ray/auth_token, or RAY_AUTH_TOKEN if set
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
RUN_NAME="$(basename "$CONFIG" .yaml)_$(date +%Y%m%d_%H%M%S)"

exec ray job submit \
  --address "$ADDRESS" \
  --submission-id "$RUN_NAME" \
  --working-dir . \
  --runtime-env cluster/runtime_env.yaml \
  -- distributed-reptile train "$CONFIG" --output "~/distributed-reptile-runs/$RUN_NAME" "$@"
