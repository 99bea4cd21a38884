#!/usr/bin/env bash
# Local base images for the container test (tests/containers) on a machine that reaches Debian's package
# mirror but no image registry: a Debian bookworm root file system with Python 3.11 (the BASE_IMAGE of
# docker/Dockerfile.*), and stand-ins for redis:7 and postgres:16 built from Debian's redis-server and
# postgresql packages. Each is built only when podman does not hold it yet (podman's storage is the cache).
#
#   bash scripts/container_images.sh           # build what is missing
#   FORCE=1 bash scripts/container_images.sh   # rebuild all three
set -euo pipefail
cd "$(dirname "$0")/.."

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON_IMAGE=${COSCOPE_BASE_IMAGE:-localhost/debian-py311:bookworm}
REDIS_IMAGE=${COSCOPE_TEST_REDIS_IMAGE:-localhost/coscope-test-redis:bookworm}
POSTGRES_IMAGE=${COSCOPE_TEST_POSTGRES_IMAGE:-localhost/coscope-test-postgres:bookworm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image NAME PACKAGES [mmdebstrap options...] -- [podman import --change options...]
# Started in the background: the three builds wait mostly on the mirror and dpkg, so they overlap well.
pids=()
image() {
  local name=$1 packages=$2
  shift 2
  if [[ ${FORCE:-0} != 1 ]] && podman image exists "$name"; then
    return
  fi
  build_image "$name" "$packages" "$@" &
  pids+=($!)
}

build_image() {
  local name=$1 packages=$2 tar="$work/${1//[^a-zA-Z0-9]/_}.tar"
  shift 2
  local strap=() change=()
  while [[ $# -gt 0 && $1 != -- ]]; do strap+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  for option in "$@"; do change+=(--change "$option"); done
  echo "building $name" >&2
  # --variant=apt: essential packages + apt, no recommends; the docs and apt lists would only add size.
  mmdebstrap --quiet --variant=apt --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    "${strap[@]}" bookworm "$tar" "deb $MIRROR bookworm main"
  podman import --quiet "${change[@]}" "$tar" "$name" >/dev/null
  rm -f "$tar"
}

# tzdata: python:3.11-slim has it, and kombu (Celery) needs a time zone database
image "$PYTHON_IMAGE" python3.11,python3.11-venv,ca-certificates,tzdata -- 'CMD ["python3.11"]'

# The official redis image turns protected mode off (it is reached over the compose network, unauthenticated);
# Debian's redis-server keeps it on without a config file, so the stand-in appends the same switch.
cat > "$work/redis-entrypoint" <<'EOF'
#!/bin/sh
if [ "${1:-}" = redis-server ]; then exec "$@" --protected-mode no; fi
exec "$@"
EOF
image "$REDIS_IMAGE" redis-server,redis-tools \
  --customize-hook="upload $work/redis-entrypoint /usr/local/bin/docker-entrypoint" \
  --customize-hook='chmod 755 "$1"/usr/local/bin/docker-entrypoint; mkdir -p "$1"/data' \
  -- 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]' 'CMD ["redis-server"]' 'WORKDIR /data' \
     'EXPOSE 6379'

image "$POSTGRES_IMAGE" postgresql-15,postgresql-client-15 \
  --customize-hook="upload docker/test/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint" \
  --customize-hook='chmod 755 "$1"/usr/local/bin/docker-entrypoint' \
  -- 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]' \
     'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
     'ENV PGDATA=/var/lib/postgresql/data' 'EXPOSE 5432' 'STOPSIGNAL SIGINT'

for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: the first build that failed fails the script
