#!/bin/sh
# Example exec handler: the payload JSON arrives on stdin; exit 0 = done,
# 65 = permanent failure, anything else = retry later.
payload=$(cat)
echo "sending email for task $WARREN_TASK_ID (attempt $WARREN_ATTEMPT/$WARREN_MAX_ATTEMPTS): $payload" >&2
exit 0
