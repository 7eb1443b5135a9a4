#!/bin/sh
# One-off job (compose service `bootstrap`, Kubernetes Job `unlearnops-bootstrap`), safe to run again:
#  1. create the workspace on the shared volume (dataset version 1, git, DVC, keys) unless it exists;
#  2. point its DVC remote at object storage (.dvc/config.local overrides the embedded local remote);
#  3. train and register the base model in the MLflow server (once);
#  4. create the GPU work pool and register the deletion flow as its deployment, on a schedule.
set -eu
: "${UNLEARNOPS_WORKSPACE:?}" "${UNLEARNOPS_TRACKING_URI:?}" "${PREFECT_API_URL:?}"
: "${UNLEARNOPS_DVC_REMOTE_URL:?e.g. s3://dvc-remote/unlearnops-demo}"
POOL="${UNLEARNOPS_WORK_POOL:-gpu}"
CRON="${UNLEARNOPS_SCHEDULE_CRON:-0 2 * * *}"

# UNLEARNOPS_INIT_OPTIONS (e.g. "--limit 400 --epochs 2") is split into words on purpose.
# shellcheck disable=SC2086
unlearnops init --json --workspace "$UNLEARNOPS_WORKSPACE" ${UNLEARNOPS_INIT_OPTIONS:-}
cd "$UNLEARNOPS_WORKSPACE"
dvc remote add --local --force --default storage "$UNLEARNOPS_DVC_REMOTE_URL"
if [ -n "${UNLEARNOPS_DVC_ENDPOINT_URL:-}" ]; then
  dvc remote modify --local storage endpointurl "$UNLEARNOPS_DVC_ENDPOINT_URL"
fi
dvc push
unlearnops train --json --workspace "$UNLEARNOPS_WORKSPACE"
prefect work-pool inspect "$POOL" >/dev/null 2>&1 || prefect work-pool create "$POOL" --type process
unlearnops schedule --work-pool "$POOL" --cron "$CRON" --json --workspace "$UNLEARNOPS_WORKSPACE"
