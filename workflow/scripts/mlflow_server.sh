#!/usr/bin/env bash
# The MLflow tracking server that a cluster's jobs write to (README "Running on a cluster (SLURM)
# and a shared MLflow server"): runs and table entries in PostgreSQL, artifacts (model.pt,
# history.json, metrics.json) uploaded through the server into a folder on the server's host.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@dbhost:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=/data/dmlrepro/mlartifacts \
#       workflow/scripts/mlflow_server.sh
#
# then set params.yaml's `mlflow: {tracking_uri: http://<this host>:5000}`; `dmlrepro mlflow-init`
# (also the Snakefile's onstart) checks that the server answers. The database, once, as
# PostgreSQL's administrator (`sudo -u postgres psql`):
#   CREATE USER mlflow WITH PASSWORD '...';  CREATE DATABASE mlflow OWNER mlflow;
# The server creates its tables on first start. It needs psycopg2: pip install -e ".[server]".
#
# Settings (environment):
#   MLFLOW_BACKEND_STORE_URI      required: postgresql://user[:password]@host[:port]/database
#   MLFLOW_ARTIFACTS_DESTINATION  where the server keeps artifacts (default ./mlartifacts): a
#                                 folder with room for every model.pt, or a URI (s3://...)
#   MLFLOW_HOST                   interface to listen on (default 0.0.0.0: the compute nodes connect)
#   MLFLOW_PORT                   default 5000
#   MLFLOW_WORKERS                server processes (default 4)
#   MLFLOW_ALLOWED_HOSTS          Host headers the server accepts (it refuses any other, against DNS
#                                 rebinding): by default this host's names and addresses, localhost
#                                 and the private IP ranges, on any port
# Further arguments go to `mlflow server` as they are (e.g. --app-name basic-auth).
# The server has no authentication unless you add it: keep the port inside the cluster's network.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set it to postgresql://user:password@host:port/database (see the header of $0)}"
case "$MLFLOW_BACKEND_STORE_URI" in
    postgresql://* | postgresql+*://*) ;;
    *) echo "$0: MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI (sqlite's file lock does not hold" \
            "across a cluster's nodes), not $MLFLOW_BACKEND_STORE_URI" >&2
       exit 2 ;;
esac
destination="${MLFLOW_ARTIFACTS_DESTINATION:-mlartifacts}"
case "$destination" in
    *://*) ;;
    *) mkdir -p "$destination" && destination="$(cd "$destination" && pwd)" ;;
esac
host="${MLFLOW_HOST:-0.0.0.0}"
port="${MLFLOW_PORT:-5000}"

if [ -z "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
    names="localhost 127.0.0.1 $(hostname -s 2>/dev/null || true) $(hostname -f 2>/dev/null || true)"
    names="$names $(hostname -I 2>/dev/null || true)"
    MLFLOW_ALLOWED_HOSTS="10.*,192.168.*,172.*"
    for name in $names; do
        MLFLOW_ALLOWED_HOSTS="$MLFLOW_ALLOWED_HOSTS,$name,$name:*"
    done
fi

echo "MLflow tracking server: http://$(hostname -f 2>/dev/null || hostname):$port" \
     "(backend ${MLFLOW_BACKEND_STORE_URI%%://*}://..., artifacts in $destination)" >&2
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$destination" \
    --serve-artifacts \
    --host "$host" \
    --port "$port" \
    --workers "${MLFLOW_WORKERS:-4}" \
    --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
    "$@"
