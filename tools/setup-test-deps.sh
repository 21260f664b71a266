#!/usr/bin/env bash
# System tools the test suite needs, installed from Debian's packages when missing:
#   chromium — tests/serve.rs renders `famix serve`'s page in headless Chromium.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    echo "famix: installing Debian's chromium for the browser test" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
