#!/bin/sh
# Example exec handler: fails permanently (65) when the payload has no "path".
payload=$(cat)
case "$payload" in
  *'"path"'*) echo "resized: $payload" >&2; exit 0 ;;
  *) echo "payload has no \"path\": $payload" >&2; exit 65 ;;
esac
