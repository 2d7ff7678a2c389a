#!/usr/bin/env bash
# A local one-node Kubernetes cluster without Docker, for the integration and e2e test tiers.
#
#   hack/cluster.sh build    build the pinned components into the cache (reused while pins hold)
#   hack/cluster.sh up       start etcd, the control plane, containerd, the kubelet, kube-proxy,
#                            CoreDNS and a hostPath volume provisioner; wait until the node is Ready
#   hack/cluster.sh env      print `export KUBECONFIG=...` for the running cluster
#   hack/cluster.sh down     stop everything and remove the cluster's state
#   hack/cluster.sh bin-dir  print where the Kubernetes binaries (kubectl among them) are cached
#
# With --control-plane-only, `up` starts etcd, kube-apiserver and the kube-controller-manager's
# garbage collector, namespace and ServiceAccount controllers only: the integration tier's
# envtest-style API server, where the tests play the other controllers.
#
# Components: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
# kubectl from the k8s.io/kubernetes module pinned in hack/k8s/go.mod; CoreDNS from its module
# (COREDNS_VERSION); the provisioner in hack/provisioner; etcd, containerd, runc and the CNI
# plugins from Debian. Builds are cached in $DOCKYARD_CACHE (default ~/.cache/dockyard).
#
# Everything listens on loopback or on this machine's own address; pods get addresses on a
# local bridge, and the service range is routed to a portless local bridge, so nothing addressed
# to the cluster leaves the machine. The API server writes an audit log (DIR/audit.log) at
# Metadata level, for counting a client's writes. This is a disposable test cluster: the
# kubelet's own API accepts anonymous requests on the node address.
#
# Settings (environment): DOCKYARD_CLUSTER_DIR (state; default /tmp/dockyard-cluster, or
# /tmp/dockyard-envtest with --control-plane-only), DOCKYARD_APISERVER_PORT (6443; 17443),
# DOCKYARD_ETCD_PORT (12379; 13379).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${DOCKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dockyard}
COREDNS_VERSION=v1.15.0
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$ROOT/hack/k8s/go.mod")
K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
# Release builds stamp their version; `kubectl version` and the API server report it.
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done
K8S_BIN=$CACHE/k8s-$K8S_VERSION-$(cat "$ROOT"/hack/k8s/go.{mod,sum} <(echo "$K8S_LDFLAGS") | sha256sum | cut -c1-12)
TOOLS_BIN=$CACHE/tools-coredns-$COREDNS_VERSION-provisioner-$(cat "$ROOT"/hack/provisioner/{go.mod,go.sum,main.go} | sha256sum | cut -c1-12)
NODE=dockyard-node
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
PAUSE_IMAGE=registry.k8s.io/pause:3.10 # built locally by hack/image.sh: nothing is pulled

CONTROL_PLANE_ONLY=0
if [[ ${1:-} == --control-plane-only ]]; then CONTROL_PLANE_ONLY=1; shift; fi
if ((CONTROL_PLANE_ONLY)); then
  DIR=${DOCKYARD_CLUSTER_DIR:-/tmp/dockyard-envtest}
  API_PORT=${DOCKYARD_APISERVER_PORT:-17443}
  ETCD_PORT=${DOCKYARD_ETCD_PORT:-13379}
else
  DIR=${DOCKYARD_CLUSTER_DIR:-/tmp/dockyard-cluster}
  API_PORT=${DOCKYARD_APISERVER_PORT:-6443}
  ETCD_PORT=${DOCKYARD_ETCD_PORT:-12379}
fi
KUBECTL=$K8S_BIN/kubectl
export PATH=$K8S_BIN:$TOOLS_BIN:/usr/sbin:/sbin:$PATH

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (apt-get install etcd-server containerd runc containernetworking-plugins iptables conntrack iproute2 openssl)"
}

build() {
  need go
  if [[ ! -x $K8S_BIN/kubectl ]]; then
    say "building Kubernetes $K8S_VERSION into $K8S_BIN (a few minutes from a cold cache)"
    mkdir -p "$K8S_BIN.tmp"
    (cd "$ROOT/hack/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags="$K8S_LDFLAGS" -o "$K8S_BIN.tmp/" \
      k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl})
    rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
  fi
  if [[ ! -x $TOOLS_BIN/provisioner ]]; then
    say "building CoreDNS $COREDNS_VERSION and the volume provisioner into $TOOLS_BIN"
    mkdir -p "$TOOLS_BIN.tmp"
    CGO_ENABLED=0 GOBIN=$TOOLS_BIN.tmp go install -trimpath -ldflags='-s -w' "github.com/coredns/coredns@$COREDNS_VERSION"
    (cd "$ROOT/hack/provisioner" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$TOOLS_BIN.tmp/provisioner" .)
    rm -rf "$TOOLS_BIN" && mv "$TOOLS_BIN.tmp" "$TOOLS_BIN"
  fi
}

node_ip() {
  # This machine's own address on its default route: pods reach the API server there.
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

start() { # NAME COMMAND...: run in the background, logging to DIR/logs/NAME.log
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/pids/$name"
}

wait_for() { # WHAT SECONDS COMMAND...: poll until COMMAND succeeds
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "timed out after ${seconds}s waiting for $what; last lines of the logs:"
      tail -n 15 "$DIR"/logs/*.log >&2 || true
      down
      exit 1
    fi
    sleep 0.5
  done
}

kubeconfig() { # FILE TOKEN
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$API_HOST:$API_PORT", certificate-authority: "$DIR/pki/apiserver.crt"}
users:
- name: user
  user: {token: "$2"}
contexts:
- name: local
  context: {cluster: local, user: user, namespace: default}
current-context: local
EOF
}

credentials() {
  mkdir -p "$DIR"/{pki,logs,pids}
  openssl genrsa -out "$DIR/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
  local t
  t() { openssl rand -hex 16; }
  # token,user,uid,"groups"
  cat >"$DIR/pki/tokens.csv" <<EOF
$(t),admin,admin,"system:masters"
$(t),system:kube-controller-manager,kcm
$(t),system:kube-scheduler,scheduler
$(t),system:node:$NODE,kubelet,"system:nodes"
$(t),system:kube-proxy,kube-proxy
$(t),system:dockyard-cluster,addons,"system:masters"
EOF
  token() { awk -F, -v u="$1" '$2 == u {print $1}' "$DIR/pki/tokens.csv"; }
  kubeconfig "$DIR/kubeconfig" "$(token admin)"
  kubeconfig "$DIR/pki/kcm.kubeconfig" "$(token system:kube-controller-manager)"
  kubeconfig "$DIR/pki/scheduler.kubeconfig" "$(token system:kube-scheduler)"
  kubeconfig "$DIR/pki/kubelet.kubeconfig" "$(token "system:node:$NODE")"
  kubeconfig "$DIR/pki/proxy.kubeconfig" "$(token system:kube-proxy)"
  kubeconfig "$DIR/pki/addons.kubeconfig" "$(token system:dockyard-cluster)"
  cat >"$DIR/pki/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
- level: Metadata
EOF
}

control_plane() {
  local ip=$1
  mkdir -p /dev/shm/dockyard-etcd
  local etcd_data
  etcd_data=$(mktemp -d /dev/shm/dockyard-etcd/data.XXXXXX) # tmpfs: a test cluster needs no fsync
  echo "$etcd_data" >"$DIR/etcd-data"
  start etcd etcd --name default --data-dir "$etcd_data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT + 1))" --log-level warn
  wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  local bind=127.0.0.1
  ((CONTROL_PLANE_ONLY)) || bind=0.0.0.0 # pods reach it on the node's address
  start kube-apiserver kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --etcd-prefix=/dockyard \
    --bind-address=$bind --advertise-address="$ip" --secure-port="$API_PORT" \
    --cert-dir="$DIR/pki" --service-cluster-ip-range=$SERVICE_CIDR \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/pki/sa.pub" --service-account-signing-key-file="$DIR/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --token-auth-file="$DIR/pki/tokens.csv" --authorization-mode=Node,RBAC \
    --audit-policy-file="$DIR/pki/audit-policy.yaml" --audit-log-path="$DIR/audit.log" \
    --audit-log-format=json --allow-privileged=true --kubelet-preferred-address-types=InternalIP \
    --profiling=false
  wait_for kube-apiserver 120 test -s "$DIR/pki/apiserver.crt"
  wait_for "the API server's readiness" 120 "$KUBECTL" --kubeconfig "$DIR/kubeconfig" get --raw /readyz

  local controllers=*
  ((CONTROL_PLANE_ONLY)) && controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller
  start kube-controller-manager kube-controller-manager \
    --kubeconfig="$DIR/pki/kcm.kubeconfig" --authentication-kubeconfig="$DIR/pki/kcm.kubeconfig" \
    --authorization-kubeconfig="$DIR/pki/kcm.kubeconfig" --use-service-account-credentials=true \
    --service-account-private-key-file="$DIR/pki/sa.key" --root-ca-file="$DIR/pki/apiserver.crt" \
    --controllers="$controllers" --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --cluster-name=dockyard --profiling=false
  # The namespace "default" holds the ServiceAccount "default" once the controllers run.
  wait_for "the ServiceAccount controller" 120 "$KUBECTL" --kubeconfig "$DIR/kubeconfig" -n default get serviceaccount default
}

node() {
  local ip=$1
  need containerd runc ctr iptables conntrack
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are missing (apt-get install containernetworking-plugins)"
  local run=/run/dockyard-cluster
  mkdir -p "$DIR"/{containerd,cni/net.d,kubelet,volumes} "$run"
  echo "$run" >"$DIR/run-dir"

  # Networking: a bridge for pods, forwarding, bridged traffic through iptables, and the
  # service range routed to a portless bridge, so that no service address leaves the machine.
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true
  ip link show dockyard-svc >/dev/null 2>&1 || ip link add dockyard-svc type bridge # a device with no ports: a dead end
  ip link set dockyard-svc up
  ip route replace $SERVICE_CIDR dev dockyard-svc
  cat >"$DIR/cni/net.d/10-dockyard.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "dockyard", "plugins": [
  {"type": "bridge", "bridge": "dockyard0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF

  cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$run/containerd"
[grpc]
  address = "$run/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
EOF
  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for containerd 60 ctr --address "$run/containerd.sock" version
  "$ROOT/hack/image.sh" import "$("$ROOT/hack/image.sh" pause --tag $PAUSE_IMAGE | tail -n 1)" --address "$run/containerd.sock" >&2

  cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
containerRuntimeEndpoint: unix://$run/containerd.sock
EOF
  start kubelet kubelet --config="$DIR/kubelet/config.yaml" --kubeconfig="$DIR/pki/kubelet.kubeconfig" \
    --root-dir="$DIR/kubelet/root" --node-ip="$ip" --hostname-override=$NODE
  start kube-proxy kube-proxy --kubeconfig="$DIR/pki/proxy.kubeconfig" --hostname-override=$NODE \
    --proxy-mode=iptables --cluster-cidr=10.244.0.0/16 --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --bind-address=127.0.0.1 --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  start kube-scheduler kube-scheduler --kubeconfig="$DIR/pki/scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/pki/scheduler.kubeconfig" --authorization-kubeconfig="$DIR/pki/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0

  addons "$ip"
  wait_for "node $NODE to be Ready" 180 "$KUBECTL" --kubeconfig "$DIR/kubeconfig" wait --for=condition=Ready "node/$NODE" --timeout=1s
}

addons() {
  local ip=$1
  # Service DNS: CoreDNS runs on the node, behind the usual kube-dns Service.
  cat >"$DIR/Corefile" <<EOF
.:53 {
    bind $ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $DIR/pki/addons.kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
EOF
  start coredns coredns -conf "$DIR/Corefile"
  start provisioner provisioner --kubeconfig="$DIR/pki/addons.kubeconfig" --root="$DIR/volumes" --node=$NODE
  "$KUBECTL" --kubeconfig "$DIR/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-node, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints:
- addresses: [$ip]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: dockyard.dev/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
EOF
}

up() {
  [[ -e $DIR/pids ]] && die "a cluster already runs in $DIR (hack/cluster.sh down first)"
  need etcd openssl curl ip
  build
  local ip=127.0.0.1
  if ((!CONTROL_PLANE_ONLY)); then
    ip=$(node_ip)
    [[ -n $ip ]] || die "no non-loopback address on this machine: the kubelet needs one"
  fi
  # The API server's self-signed certificate names the address it advertises.
  API_HOST=$ip
  say "starting in $DIR (Kubernetes $K8S_VERSION, API server https://$API_HOST:$API_PORT)"
  credentials
  control_plane "$ip"
  ((CONTROL_PLANE_ONLY)) || node "$ip"
  say "ready: export KUBECONFIG=$DIR/kubeconfig"
}

down() {
  [[ -d $DIR ]] || return 0
  local run=""
  [[ -f $DIR/run-dir ]] && run=$(cat "$DIR/run-dir")
  if [[ -n $run && -S $run/containerd.sock ]]; then
    # Stop the pods first, so no container outlives the cluster.
    pkill -TERM -F "$DIR/pids/kubelet" 2>/dev/null || true
    for task in $(ctr --address "$run/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$run/containerd.sock" -n k8s.io tasks kill -s KILL "$task" >/dev/null 2>&1 || true
    done
  fi
  local name
  for name in provisioner coredns kube-proxy kubelet kube-scheduler containerd kube-controller-manager kube-apiserver etcd; do
    [[ -f $DIR/pids/$name ]] || continue
    local pid
    pid=$(cat "$DIR/pids/$name")
    kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "-$pid" 2>/dev/null || true
  done
  if [[ -n $run ]]; then
    # Leftovers of the node: pod mounts, network namespaces, the bridge, kube-proxy's rules.
    grep -oE " ($DIR|$run)/[^ ]+" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    kube-proxy --cleanup >/dev/null 2>&1 || true
    ip link del dockyard0 2>/dev/null || true
    ip route del $SERVICE_CIDR dev dockyard-svc 2>/dev/null || true
    ip link del dockyard-svc 2>/dev/null || true
    local rule
    iptables -t nat -S POSTROUTING 2>/dev/null | { grep -e '-A POSTROUTING.*CNI-' || true; } | sed 's/^-A/-D/' |
      while read -r rule; do eval "iptables -t nat $rule" 2>/dev/null || true; done
    rm -rf "$run"
  fi
  [[ -f $DIR/etcd-data ]] && rm -rf "$(cat "$DIR/etcd-data")"
  rm -rf "$DIR"
}

case ${1:-} in
  build) build ;;
  bin-dir) echo "$K8S_BIN" ;;
  up) up ;;
  down) down ;;
  env) [[ -f $DIR/kubeconfig ]] || die "no cluster in $DIR (hack/cluster.sh up)"; echo "export KUBECONFIG=$DIR/kubeconfig" ;;
  *) echo "usage: hack/cluster.sh [--control-plane-only] build|up|down|env|bin-dir" >&2; exit 2 ;;
esac
