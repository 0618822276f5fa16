#!/bin/sh
# actions-log.sh: an action script that records every notification point of a dump or
# restore in $CRTOOLS_IMAGE_DIR/actions.log (one line: action, init pid if any, time), so a
# checkpoint directory carries an audit trail of what happened to it.
#
#   cryo dump -t PID -D DIR --action-script hooks/actions-log.sh
#   cryo restore -D DIR -d --action-script hooks/actions-log.sh
#
# Set ACTIONS_LOG_FAIL_AT=<action> to make the script fail at that point (it then aborts the
# operation: a dump leaves the process running, a restore leaves nothing behind).
set -eu
: "${CRTOOLS_SCRIPT_ACTION:?not run by cryo/criu}"
echo "$CRTOOLS_SCRIPT_ACTION ${CRTOOLS_INIT_PID:--} $(date +%s.%N)" >>"${CRTOOLS_IMAGE_DIR:-.}/actions.log"
if [ "${ACTIONS_LOG_FAIL_AT:-}" = "$CRTOOLS_SCRIPT_ACTION" ]; then
    echo "actions-log.sh: failing at $CRTOOLS_SCRIPT_ACTION as asked" >&2
    exit 1
fi
