#!/usr/bin/env bash
# Podman on a machine like the developers' (Debian 12, root, no Docker daemon, no Docker Hub):
# installs podman, buildah, runc and mmdebstrap if missing; writes podman's settings into a folder
# of its own ($CCCAD_CONTAINERS_DIR, default /var/tmp/cccad-containers: kept between runs, so the
# base image and the image's layers are reused); makes the Debian 12 base image
# localhost/debian:bookworm from Debian's mirror with mmdebstrap unless it is there. Needs root.
# Prints the line that points podman at it:
#   export CONTAINERS_CONF=<dir>/containers.conf CONTAINERS_STORAGE_CONF=<dir>/storage.conf
set -euo pipefail
dir=${CCCAD_CONTAINERS_DIR:-/var/tmp/cccad-containers}
mkdir -p "$dir"
need=()
for cmd in podman buildah runc mmdebstrap; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "containers/setup.sh: installing podman buildah runc mmdebstrap (missing: ${need[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null
fi
# crun fails here ("cgroups in hybrid mode not supported"); the default ulimits cannot be set here
cat >"$dir/containers.conf" <<CONF
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=30000:30000"]
CONF
cat >"$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "/run/cccad-containers"
CONF
export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf
if ! podman image exists localhost/debian:bookworm; then
  echo "containers/setup.sh: making localhost/debian:bookworm with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase --include=apt,ca-certificates bookworm "$dir/bookworm.tar" >&2
  podman import "$dir/bookworm.tar" localhost/debian:bookworm >/dev/null
  rm -f "$dir/bookworm.tar"
fi
echo "export CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
