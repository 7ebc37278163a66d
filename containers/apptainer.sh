#!/usr/bin/env bash
# `apptainer ...` on a machine like the developers' (Debian 12, which has no apptainer): Debian
# sid's apptainer in a privileged podman container (localhost/apptainer:sid, made with mmdebstrap
# if missing), with the working directory bound at the same path. Variables APPTAINER* are passed
# in, and the host's CA bundle is at /host-ca/ca-certificates.crt (this machine's network: a build
# given `--bind /host-ca:/srv` and APPTAINERENV_PIP_CERT=/srv/ca-certificates.crt has pip trust it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
eval "$("$here/setup.sh")"
dir=${CCCAD_CONTAINERS_DIR:-/var/tmp/cccad-containers}
if ! podman image exists localhost/apptainer:sid; then
  echo "containers/apptainer.sh: making localhost/apptainer:sid with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase --include=apptainer,ca-certificates,squashfs-tools,uidmap \
    --aptopt 'Acquire::Check-Valid-Until "false"' sid "$dir/sid.tar" >&2
  podman import "$dir/sid.tar" localhost/apptainer:sid >/dev/null
  rm -f "$dir/sid.tar"
fi
ca=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(-v /etc/ssl/certs/ca-certificates.crt:/host-ca/ca-certificates.crt:ro)
# root here lacks a capability apptainer asks for when it runs an image as root: run it
# unprivileged (--no-privs). --fakeroot builds need subordinate ids for root inside.
case "${1:-}" in exec|run|shell) set -- "$1" --no-privs "${@:2}" ;; esac
exec podman run --rm --privileged --network=host -v "$PWD:$PWD" -w "$PWD" -v "$dir:$dir" "${ca[@]}" \
  --env 'APPTAINER*' -e APPTAINER_TMPDIR="$dir/tmp" localhost/apptainer:sid \
  sh -c 'grep -q "^root:" /etc/subuid || { echo root:100000:65536 >>/etc/subuid; echo root:100000:65536 >>/etc/subgid; }
         mkdir -p "$APPTAINER_TMPDIR"; exec apptainer "$@"' apptainer "$@"
