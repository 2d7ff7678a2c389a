#!/usr/bin/env bash
# A local S3 server (SeaweedFS) for the S3 storage tests and benchmarks.
#
#   hack/s3.sh build   build the pinned SeaweedFS `weed` into the cache (reused while the pin holds)
#   hack/s3.sh up      start `weed mini` (master, volume server, filer and S3 gateway in one
#                      process) on 127.0.0.1 with static credentials; wait until S3 answers
#   hack/s3.sh env     print `export DOCKYARD_S3_ENDPOINT=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...`
#   hack/s3.sh down    stop it and remove its data
#   hack/s3.sh bin     print the path of the built `weed` binary
#
# SeaweedFS comes from its Go module at WEED_VERSION. Its go.mod has a replace directive, which
# `go install module@version` refuses, so `build` downloads the module's source (checked against
# the Go checksum database like any module) and builds it with that go.mod and go.sum. Builds are
# cached in $DOCKYARD_CACHE (default ~/.cache/dockyard). Measured on 2 cores shared with other
# work: 15 minutes with empty Go module and build caches, 14 seconds with warm ones.
#
# The tests (tests/s3) start `weed` themselves, on free ports; `up` is for working by hand.
# Everything listens on 127.0.0.1; the WebDAV gateway, the admin UI (its server still runs),
# the Iceberg and Lance catalogs and the telemetry report are off. This is a disposable test server: its
# credentials are fixed and printed by `env`.
#
# Settings (environment): DOCKYARD_S3_DIR (state and data; default /tmp/dockyard-s3),
# DOCKYARD_S3_PORT (the S3 port, 18333; the next nine ports serve SeaweedFS's other listeners).
set -euo pipefail

CACHE=${DOCKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dockyard}
WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
WEED_LDFLAGS="-s -w"
WEED_BIN=$CACHE/seaweedfs-$WEED_VERSION-$(echo "$WEED_MODULE@$WEED_VERSION CGO_ENABLED=0 $WEED_LDFLAGS" | sha256sum | cut -c1-12)
WEED=$WEED_BIN/weed
DIR=${DOCKYARD_S3_DIR:-/tmp/dockyard-s3}
PORT=${DOCKYARD_S3_PORT:-18333}
ACCESS_KEY=dockyard
SECRET_KEY=dockyard-secret-key
ENDPOINT=http://127.0.0.1:$PORT

say() { echo "s3: $*" >&2; }
die() { say "$*"; exit 1; }

build() {
  command -v go >/dev/null || die "missing: go (SeaweedFS is built from source)"
  [[ -x $WEED ]] && return 0
  say "building SeaweedFS $WEED_VERSION into $WEED_BIN (about 15 minutes from cold Go caches)"
  local src
  src=$(go mod download -json "$WEED_MODULE@$WEED_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n $src && -f $src/go.mod ]] || die "could not download $WEED_MODULE@$WEED_VERSION"
  mkdir -p "$WEED_BIN.tmp"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="$WEED_LDFLAGS" \
    -o "$WEED_BIN.tmp/weed" ./weed)
  rm -rf "$WEED_BIN" && mv "$WEED_BIN.tmp" "$WEED_BIN"
}

s3_config() { # FILE: the identities, in SeaweedFS's -s3.config format
  cat >"$1" <<EOF
{"identities": [
  {"name": "dockyard", "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
   "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
]}
EOF
}

up() {
  [[ -e $DIR/pid ]] && die "a server already runs in $DIR (hack/s3.sh down first)"
  command -v curl >/dev/null || die "missing: curl"
  build
  mkdir -p "$DIR/data"
  s3_config "$DIR/s3.json"
  say "starting SeaweedFS $WEED_VERSION in $DIR (S3 on $ENDPOINT)"
  # The AWS_* variables would add an identity of their own: the server sees only s3.json.
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY setsid "$WEED" mini -dir="$DIR/data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$DIR/s3.json" \
    -s3.port="$PORT" -master.port=$((PORT + 1)) -volume.port=$((PORT + 2)) -filer.port=$((PORT + 3)) \
    -s3.port.grpc=$((PORT + 4)) -master.port.grpc=$((PORT + 5)) -volume.port.grpc=$((PORT + 6)) \
    -filer.port.grpc=$((PORT + 7)) -admin.port=$((PORT + 8)) -admin.port.grpc=$((PORT + 9)) \
    -admin.port.legacy=0 -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
    -master.telemetry=false >"$DIR/weed.log" 2>&1 </dev/null &
  echo $! >"$DIR/pid"
  local deadline=$((SECONDS + 120))
  # Unsigned requests get 403 from S3 once the gateway serves: any HTTP status means ready.
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "$ENDPOINT/" 2>/dev/null) != 000 ]]; do
    if ! kill -0 "$(cat "$DIR/pid")" 2>/dev/null || ((SECONDS >= deadline)); then
      say "SeaweedFS did not start; last lines of $DIR/weed.log:"
      tail -n 20 "$DIR/weed.log" >&2 || true
      down
      exit 1
    fi
    sleep 0.2
  done
  say "ready: $ENDPOINT (eval \"\$(hack/s3.sh env)\" for the credentials)"
  echo "$ENDPOINT"
}

down() {
  [[ -d $DIR ]] || return 0
  if [[ -f $DIR/pid ]]; then
    local pid
    pid=$(cat "$DIR/pid")
    kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "-$pid" 2>/dev/null || true
  fi
  rm -rf "$DIR"
}

case ${1:-} in
  build) build ;;
  bin) echo "$WEED" ;;
  up) up ;;
  down) down ;;
  env)
    [[ -f $DIR/pid ]] || die "no server in $DIR (hack/s3.sh up)"
    echo "export DOCKYARD_S3_ENDPOINT=$ENDPOINT AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    ;;
  *) echo "usage: hack/s3.sh build|up|down|env|bin" >&2; exit 2 ;;
esac
