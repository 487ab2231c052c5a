#!/bin/sh
# The medsilo SuperNode's entrypoint: `medsilo node check` on the --node-config it is given,
# then Flower's SuperNode with the same arguments. A misconfigured node (a typo in a key, a
# missing or empty data folder, a secret key others can read) stops here with one line and
# exit code 2, instead of showing "online" and failing when the first run arrives.
#
# The run's classes: MEDSILO_CLASSES (comma-separated) or the MEDSILO_DATASET preset (brain-mri).
set -eu

case "${1:-}" in
    --help | -h | --version | -V) exec flower-supernode "$@" ;;
esac

node_config=""
previous=""
for arg in "$@"; do
    [ "$previous" = "--node-config" ] && node_config="$arg"
    case "$arg" in
        --node-config=*) node_config="${arg#--node-config=}" ;;
    esac
    previous="$arg"
done

if [ -n "${MEDSILO_CLASSES:-}" ]; then
    medsilo node check --node-config "$node_config" --classes "$MEDSILO_CLASSES"
else
    medsilo node check --node-config "$node_config" --dataset "${MEDSILO_DATASET:-brain-mri}"
fi
exec flower-supernode "$@"
