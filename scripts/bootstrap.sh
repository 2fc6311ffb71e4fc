#!/usr/bin/env bash
# Idempotent machine setup for kpimon: system tools, the virtualenv and the Kafka broker jars.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

PYTHON="${PYTHON:-python3}"
say() { printf '==> %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# tmux: the demo's test runs `kpimon demo` in a terminal, as a new user would.
if ! command -v promtool >/dev/null || ! command -v kcat >/dev/null || ! command -v tmux >/dev/null; then
  command -v apt-get >/dev/null || die "promtool, kcat or tmux is missing and apt-get is not available; install prometheus, kcat and tmux by hand"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    die "installing prometheus, kcat and tmux needs root or sudo"
  fi
  say "installing prometheus (promtool), kcat and tmux with apt-get"
  $SUDO apt-get update -qq
  # env, because sudo drops DEBIAN_FRONTEND; no recommends, to skip node-exporter and friends.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus kcat tmux >/dev/null
fi
say "promtool, kcat and tmux: ok"

command -v java >/dev/null || die "java not found: Kafka 4 needs Java 17+ (e.g. apt-get install openjdk-17-jre-headless)"
java_version="$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')"
[ "${java_version%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4 needs Java 17+, found java ${java_version:-of unknown version}"
command -v mvn >/dev/null || die "mvn not found: Maven is needed to fetch the Kafka jars (e.g. apt-get install maven)"
say "java $java_version and maven: ok"

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# The stamp makes a re-run free until pyproject.toml (and so the dependency set) changes.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  say "installing kpimon and its test dependencies into .venv"
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi
say "virtualenv: ok"

# Fetched once with Maven; later runs only check the marker.
.venv/bin/python -c 'from kpimon.broker import LocalBroker, project_root; print("==> Kafka jars: ok in", LocalBroker(project_root()).ensure_jars())'
