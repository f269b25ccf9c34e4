#!/bin/sh
# Example exec handler of a periodic task: `[schedules.nightly_report]` fires it; the task id
# names the firing (nightly_report@2026-11-24T02:00:00Z), the payload is the schedule's.
payload=$(cat)
echo "building report $WARREN_TASK_ID: $payload" >&2
exit 0
