#!/usr/bin/env bash
# What the tests need beside Rust, from Debian's packages: tmux (the terminal test drives
# `baton watch` in it), ffmpeg and ffprobe (the video stage and its checks), Chromium (the
# report's screenshot test) and Prometheus' promtool (`baton metrics`' format check). Installs
# only what is missing; safe to run again.
set -euo pipefail
need=()
command -v tmux >/dev/null || need+=(tmux)
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v chromium >/dev/null || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
