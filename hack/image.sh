#!/usr/bin/env bash
# Builds Dockyard's container image without a Docker engine, and loads it into containerd.
#
#   hack/image.sh build [--tag dockyard:dev] [--no-cache]
#       The image the Dockerfile describes, from Debian packages instead of python:3.11-slim:
#       a Debian bookworm rootfs made by mmdebstrap (python3, python3-venv, ca-certificates),
#       plus a layer with a virtualenv at /opt/dockyard holding `pip install .` of this checkout
#       (runtime dependencies only, from PyPI), packed by umoci into an OCI archive whose image
#       is named with its fully qualified reference (dockyard:dev -> docker.io/library/dockyard:dev).
#   hack/image.sh pause [--tag NAME]
#       A tiny sandbox ("pause") image: Debian's static busybox in a shell that waits for SIGTERM.
#       NAME defaults to the sandbox_image of containerd's config, so the kubelet never pulls it.
#   hack/image.sh import ARCHIVE [--address SOCKET] [--snapshotter NAME]
#       `ctr -n k8s.io images import` of an archive built here, so the kubelet finds it by name.
#
# Needs root and the Debian packages mmdebstrap, umoci, jq (build), busybox-static (pause) and
# containerd (import). No Docker engine and no image registry: the base comes from Debian's
# mirror, the Python packages from PyPI.
#
# Cache, outside the checkout: ${DOCKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dockyard}/image/
#   base-KEY/        the OCI layout of the Debian layer, KEY a hash of the mmdebstrap arguments
#                    (suite, variant, packages); mmdebstrap runs only when it changes
#                    (or with --no-cache: the Debian packages then get their latest updates)
#   NAME.oci.tar     the archive of one image, NAME.oci.tar.key the inputs it was built from:
#                    the base KEY, the content of pyproject.toml, README.md and operator/
#                    (files git tracks or does not ignore) and this script. A build whose inputs
#                    did not change prints the existing archive's path and returns.
# The archive's path is the last line `build` and `pause` print on stdout; progress goes to stderr.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/hack/image.sh"
CACHE=${DOCKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dockyard}/image

SUITE=bookworm
VARIANT=apt
PACKAGES=python3,python3-venv,ca-certificates
VENV=/opt/dockyard
# The same search path as the python:3.11-slim image's, behind the virtualenv.
IMAGE_PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The project files the Dockerfile copies into its build stage.
SOURCES=(pyproject.toml README.md operator)

# Everything that decides the Debian layer; its hash keys the cached base.
# shellcheck disable=SC2016 # mmdebstrap runs the hooks with the rootfs as $1
MMDEBSTRAP_ARGS=(
  --mode=root --variant="$VARIANT" --include="$PACKAGES"
  # merged /usr from the start, without the usrmerge package and the perl it needs (46 MB)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='Acquire::Languages "none"'
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/apt/* "$1"/var/cache/ldconfig/aux-cache'
  "$SUITE"
)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum | cut -c1-16; }

need() {
  local cmd pkg
  for cmd in "$@"; do
    pkg=${cmd#*:} cmd=${cmd%%:*}
    command -v "$cmd" >/dev/null || die "$cmd not found: apt-get install $pkg"
  done
}

# dockyard:dev -> docker.io/library/dockyard:dev, the name containerd's CRI looks up.
normalize() {
  local ref=$1 first
  [[ $ref == *[:@]* && ${ref##*/} == *[:@]* ]] || ref="$ref:latest"
  first=${ref%%/*}
  if [[ $ref != */* ]]; then
    ref="docker.io/library/$ref"
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    ref="docker.io/$ref"
  fi
  printf '%s\n' "$ref"
}

# The archive's file name for an image: docker.io/library/dockyard:dev -> dockyard-dev.
archive_name() { local ref=${1##*/}; printf '%s\n' "${ref//[:@]/-}"; }

# --- scratch space, and the mounts of the build chroot; both undone on any exit --------------

WORK=
MOUNTS=()
CREATED=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true
  done
  MOUNTS=()
  [[ -n $WORK && -d $WORK ]] || return 0
  if grep -qF " $WORK/" /proc/self/mounts; then
    printf 'image.sh: %s still has mounts; not removing it\n' "$WORK" >&2
    return 0
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

workdir() {
  mkdir -p "$CACHE"
  WORK=$(mktemp -d "$CACHE/work.XXXXXX")
}

# One build at a time per cache.
lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
}

# --- OCI layouts ------------------------------------------------------------------------------

# Writes LAYOUT's image TAG as an OCI archive at OUT, named NAME. The archive's index holds that
# one manifest, annotated with both names ctr reads (io.containerd.image.name first, and the OCI
# ref.name, which ctr 1.6 takes as is when it is a full reference), and only its blobs.
export_archive() {
  local layout=$1 tag=$2 name=$3 out=$4 dir desc digest
  dir="$WORK/export"
  mkdir -p "$dir/blobs/sha256"
  desc=$(jq -ce --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)' \
    "$layout/index.json") || die "no tag $tag in $layout"
  digest=$(jq -r .digest <<<"$desc")
  for digest in "$digest" $(jq -r '.config.digest, .layers[].digest' "$layout/blobs/sha256/${digest#sha256:}"); do
    ln -f "$layout/blobs/sha256/${digest#sha256:}" "$dir/blobs/sha256/" 2>/dev/null ||
      cp "$layout/blobs/sha256/${digest#sha256:}" "$dir/blobs/sha256/"
  done
  cp "$layout/oci-layout" "$dir/"
  jq -n --argjson d "$desc" --arg n "$name" '{schemaVersion: 2, manifests: [
      $d | .annotations = {"io.containerd.image.name": $n, "org.opencontainers.image.ref.name": $n}]}' \
    >"$dir/index.json"
  tar -C "$dir" --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv -f "$out.tmp" "$out"
  rm -rf "$dir"
}

# Prints each layer's compressed size and the total, from a layout's tag.
sizes() {
  local layout=$1 tag=$2 manifest
  manifest=$(jq -r --arg t "$tag" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$layout/index.json")
  jq -r '.layers[] | "\(.size)"' "$layout/blobs/sha256/${manifest#sha256:}" |
    awk '{ t += $1; printf "layer %d: %.1f MB compressed\n", NR, $1 / 1e6 } END { printf "total: %.1f MB compressed\n", t / 1e6 }' >&2
}

# --- the chroot in which the virtualenv is built -------------------------------------------

chroot_mount() {
  local rootfs=$1
  mount -t proc proc "$rootfs/proc" && MOUNTS+=("$rootfs/proc")
  mount --bind /dev "$rootfs/dev" && MOUNTS+=("$rootfs/dev")
  # Name resolution and the host's CA bundle (which may hold a proxy's CA) for pip, only while
  # it runs: /tmp/dockyard-build is removed before the layer is packed.
  mkdir -p "$rootfs/tmp/dockyard-build"
  cp /etc/resolv.conf "$rootfs/tmp/dockyard-build/resolv.conf"
  cp /etc/hosts "$rootfs/tmp/dockyard-build/hosts"
  local f
  for f in resolv.conf hosts; do
    if [[ ! -e $rootfs/etc/$f ]]; then touch "$rootfs/etc/$f"; CREATED+=("$rootfs/etc/$f"); fi
    mount --bind "$rootfs/tmp/dockyard-build/$f" "$rootfs/etc/$f" && MOUNTS+=("$rootfs/etc/$f")
  done
}

chroot_umount() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}"
  done
  MOUNTS=()
  rm -f "${CREATED[@]}"
  CREATED=()
}

# The project files to install: those git tracks or does not ignore (as .dockerignore keeps
# __pycache__ and *.egg-info out of the Docker build), NUL-separated, sorted.
source_files() {
  local f
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- "${SOURCES[@]}" |
      while IFS= read -r -d '' f; do if [[ -f $ROOT/$f ]]; then printf '%s\0' "$f"; fi; done
  else
    (cd "$ROOT" && find "${SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
      ! -path '*.egg-info/*' -print0)
  fi | LC_ALL=C sort -zu
}

# --- build ------------------------------------------------------------------------------------

base_key() { printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" | sha; }

# Sets BASE to the OCI layout of the Debian layer (tagged "base"), made when its key is not in
# the cache.
ensure_base() {
  local key tmp old
  key=$(base_key)
  BASE="$CACHE/base-$key"
  if [[ -f $BASE/index.json && ${NO_CACHE:-0} != 1 ]]; then
    log "Debian $SUITE base: cached ($BASE)"
    return
  fi
  log "Debian $SUITE base: mmdebstrap --variant=$VARIANT --include=$PACKAGES (a minute or two)"
  tmp="$WORK/base"
  umoci init --layout "$tmp"
  umoci new --image "$tmp:base"
  umoci unpack --image "$tmp:base" "$WORK/bundle-base" >&2
  mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$WORK/bundle-base/rootfs" >&2
  # The runtime mounts its own /dev; mmdebstrap (in root mode) made device nodes there.
  find "$WORK/bundle-base/rootfs/dev" -mindepth 1 -delete
  umoci repack --image "$tmp:base" --history.created_by "mmdebstrap ${MMDEBSTRAP_ARGS[*]}" \
    "$WORK/bundle-base" >&2
  rm -rf "$WORK/bundle-base"
  umoci gc --layout "$tmp"
  # Only the current base is kept.
  for old in "$CACHE"/base-*; do if [[ -e $old ]]; then rm -rf "$old"; fi; done
  mv "$tmp" "$BASE"
}

cmd_build() {
  local tag=dockyard:dev name key out bundle rootfs start=$SECONDS
  NO_CACHE=0
  while (($#)); do
    case $1 in
      --tag) tag=${2:?--tag needs a value}; shift 2 ;;
      --tag=*) tag=${1#*=}; shift ;;
      --no-cache) NO_CACHE=1; shift ;;
      *) die "build: unknown argument $1" ;;
    esac
  done
  ((EUID == 0)) || die "build needs root (mmdebstrap --mode=root, chroot, mounts)"
  need mmdebstrap umoci jq flock:util-linux
  name=$(normalize "$tag")
  out="$CACHE/$(archive_name "$name").oci.tar"
  lock

  key=$({
    base_key
    source_files | (cd "$ROOT" && xargs -0r sha256sum)
    sha256sum <"$SELF"
    printf '%s\n' "$name"
  } | sha)
  if [[ ${NO_CACHE} != 1 && -f $out && "$(cat "$out.key" 2>/dev/null)" == "$key" ]]; then
    log "$name: up to date ($key)"
    printf '%s\n' "$out"
    return
  fi

  workdir
  ensure_base
  log "$name: virtualenv layer ($VENV, pip install . from PyPI)"
  cp -a "$BASE" "$WORK/oci"
  bundle="$WORK/bundle"
  rootfs="$bundle/rootfs"
  umoci unpack --image "$WORK/oci:base" "$bundle" >&2
  mkdir -p "$rootfs/tmp/dockyard-src"
  source_files | tar -C "$ROOT" --null -T - -cf - | tar -C "$rootfs/tmp/dockyard-src" -xf -

  chroot_mount "$rootfs"
  local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}} envs=() v
  if [[ -f $ca ]]; then
    cp "$ca" "$rootfs/tmp/dockyard-build/ca.crt"
    envs+=(PIP_CERT=/tmp/dockyard-build/ca.crt)
  fi
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT \
    http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [[ -n ${!v:-} ]]; then envs+=("$v=${!v}"); fi
  done
  # As the Dockerfile's build stage: runtime dependencies only, then no pip or setuptools.
  # PYTHONDONTWRITEBYTECODE keeps the builder's own bytecode out of the layer; compileall
  # then writes the virtualenv's.
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off PYTHONDONTWRITEBYTECODE=1 \
    "${envs[@]}" /bin/sh -euxc "
      python3 -m venv $VENV
      $VENV/bin/pip install /tmp/dockyard-src
      $VENV/bin/pip uninstall --yes pip setuptools
      python3 -m compileall -q $VENV
      $VENV/bin/dockyard --help >/dev/null
    " >&2
  chroot_umount
  rm -rf "$rootfs/tmp/dockyard-src" "$rootfs/tmp/dockyard-build" "$rootfs/root/.cache"
  find "$rootfs" -xdev -path "$rootfs$VENV" -prune -o -name __pycache__ -type d -newer "$bundle/config.json" \
    -exec rm -rf {} +

  umoci repack --image "$WORK/oci:dockyard" --history.created_by "python3 -m venv $VENV && pip install ." \
    "$bundle" >&2
  umoci config --image "$WORK/oci:dockyard" --clear=config.env --clear=config.entrypoint --clear=config.cmd \
    --config.env "PATH=$IMAGE_PATH" --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.env PYTHONUNBUFFERED=1 --config.env HOME=/tmp \
    --config.user 65532:65532 --config.exposedports 5000/tcp --config.exposedports 8080/tcp \
    --config.entrypoint dockyard --config.cmd=--help \
    --history.created_by "ENV, USER 65532:65532, EXPOSE 5000 8080, ENTRYPOINT [dockyard], CMD [--help]"
  umoci gc --layout "$WORK/oci"
  sizes "$WORK/oci" dockyard
  export_archive "$WORK/oci" dockyard "$name" "$out"
  printf '%s\n' "$key" >"$out.key"
  log "$name: $(du -h "$out" | cut -f1) archive, built in $((SECONDS - start))s"
  printf '%s\n' "$out"
}

# --- pause ------------------------------------------------------------------------------------

# The sandbox image containerd's CRI is configured with (sandbox_image), or pause:3.10.
sandbox_image() {
  local cfg=${CONTAINERD_CONFIG:-/etc/containerd/config.toml} img=''
  if command -v containerd >/dev/null; then
    # Without a config file containerd runs on its defaults.
    img=$(if [[ -f $cfg ]]; then containerd --config "$cfg" config dump; else containerd config default; fi 2>/dev/null |
      sed -n 's/^ *sandbox_image *= *"\(.*\)"/\1/p' | head -n1) || img=''
  fi
  printf '%s\n' "${img:-registry.k8s.io/pause:3.10}"
}

cmd_pause() {
  local tag='' name out busybox=/bin/busybox rootfs
  while (($#)); do
    case $1 in
      --tag) tag=${2:?--tag needs a value}; shift 2 ;;
      --tag=*) tag=${1#*=}; shift ;;
      *) die "pause: unknown argument $1" ;;
    esac
  done
  ((EUID == 0)) || die "pause needs root (umoci unpack and repack keep file owners)"
  need umoci jq flock:util-linux
  [[ $(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null) == *' installed' ]] ||
    die "no static busybox: apt-get install busybox-static"
  name=$(normalize "${tag:-$(sandbox_image)}")
  out="$CACHE/$(archive_name "$name").oci.tar"
  lock
  workdir
  umoci init --layout "$WORK/oci"
  umoci new --image "$WORK/oci:pause"
  umoci unpack --image "$WORK/oci:pause" "$WORK/bundle" >&2
  rootfs="$WORK/bundle/rootfs"
  install -d -m 0755 "$rootfs/bin" "$rootfs/dev" "$rootfs/proc" "$rootfs/sys" "$rootfs/etc"
  install -d -m 1777 "$rootfs/tmp"
  install -m 0755 "$busybox" "$rootfs/bin/busybox"
  ln -s busybox "$rootfs/bin/sh"
  ln -s busybox "$rootfs/bin/sleep"
  umoci repack --image "$WORK/oci:pause" --history.created_by "busybox-static $(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null || true)" \
    "$WORK/bundle" >&2
  # PID 1 ignores signals it has no handler for: the trap makes SIGTERM end the sandbox at once.
  umoci config --image "$WORK/oci:pause" --clear=config.env --clear=config.cmd \
    --config.env PATH=/bin --config.user 65535:65535 \
    --config.entrypoint /bin/busybox --config.entrypoint sh --config.entrypoint -c \
    --config.entrypoint 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait; done' \
    --history.created_by "ENTRYPOINT sleep until SIGTERM"
  umoci gc --layout "$WORK/oci"
  export_archive "$WORK/oci" pause "$name" "$out"
  log "$name: $(du -h "$out" | cut -f1) archive"
  printf '%s\n' "$out"
}

# --- import -----------------------------------------------------------------------------------

cmd_import() {
  local archive='' address=/run/containerd/containerd.sock snapshotter='' names n opts=()
  while (($#)); do
    case $1 in
      --address) address=${2:?--address needs a value}; shift 2 ;;
      --address=*) address=${1#*=}; shift ;;
      --snapshotter) snapshotter=${2:?--snapshotter needs a value}; shift 2 ;;
      --snapshotter=*) snapshotter=${1#*=}; shift ;;
      -*) die "import: unknown argument $1" ;;
      *) [[ -z $archive ]] || die "import: one archive at a time"; archive=$1; shift ;;
    esac
  done
  [[ -n $archive ]] || die "usage: hack/image.sh import ARCHIVE [--address SOCKET] [--snapshotter NAME]"
  [[ -f $archive ]] || die "no such archive: $archive"
  need ctr:containerd jq
  names=$(tar -xOf "$archive" index.json |
    jq -r '.manifests[].annotations | .["io.containerd.image.name"] // .["org.opencontainers.image.ref.name"] // empty')
  [[ -n $names ]] || die "$archive names no image (no io.containerd.image.name annotation)"
  if [[ -n $snapshotter ]]; then opts+=(--snapshotter "$snapshotter"); fi
  # ctr names each image from its io.containerd.image.name annotation, verbatim.
  ctr -n k8s.io --address "$address" images import "${opts[@]}" "$archive" >&2
  for n in $names; do
    ctr -n k8s.io --address "$address" images ls "name==$n" | grep -qF "$n" ||
      die "containerd does not list $n after the import"
    log "containerd (namespace k8s.io) has $n"
  done
  ctr -n k8s.io --address "$address" images ls >&2
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

case ${1:-} in
  build | pause | import) cmd=$1; shift; "cmd_$cmd" "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
