#!/bin/sh
# Greet with what Zoe injected, count for HELLO_SECONDS (8 by default), then exit 0:
# this service has monitor=true, so its clean exit ends the execution as finished.
set -eu

# As PID 1 the shell ignores SIGTERM unless it traps it; stop promptly when Zoe asks.
trap 'echo "hello: terminated"; exit 143' TERM INT

seconds="${HELLO_SECONDS:-8}"
echo "${GREETING:-Hello from Zoe}! execution ${EXECUTION_ID:-unknown}, service ${SERVICE_NAME:-unknown}"
i=1
while [ "$i" -le "$seconds" ]; do
    echo "hello: ${i} of ${seconds}"
    sleep 1
    i=$((i + 1))
done
echo "hello: done"
