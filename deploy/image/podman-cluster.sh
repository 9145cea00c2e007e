#!/usr/bin/env bash
# A kraken cluster of containers from the image of deploy/image/build.sh, on this machine:
# one podman container per role (origin, tracker, build-index, proxy, agent) on the host
# network (loopback addresses), each with its config, its certificate and the CA mounted
# read-only and its data directory mounted read-write. Then skopeo pushes a generated
# image through the proxy container, a private containerd (`ctr`, its own socket and root)
# pulls it through the agent container as a registry mirror (hosts.toml), and every blob
# containerd holds is checked byte for byte against the pushed one (sha256 of its bytes).
#
#   deploy/image/podman-cluster.sh [--image OCI_DIR:TAG] [--binary-dir DIR] [--runtime RUNC]
#                                  [--base-port 27600] [--keep]
#
# --image: an OCI layout built by build.sh (default: build one from --binary-dir,
# default target/release). --runtime: the OCI runtime podman runs (default runc, or
# deploy/image/runc-without-rlimits where this process lacks CAP_SYS_RESOURCE: runc then
# cannot apply the limits podman always sets).
# Everything lives in a temporary directory (podman's vfs storage included) and is removed
# at the end, containers first, unless --keep. Needs root, podman, runc, skopeo, umoci,
# containerd and curl.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
image=""
bin_dir="$root/target/release"
runtime=""
base=27600
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --binary-dir) bin_dir="$2"; shift 2 ;;
        --runtime) runtime="$2"; shift 2 ;;
        --base-port) base="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "podman-cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in podman skopeo umoci containerd ctr curl; do
    command -v "$tool" >/dev/null || { echo "podman-cluster.sh: $tool is needed" >&2; exit 1; }
done

if [ -z "$runtime" ]; then
    runtime=runc
    # CAP_SYS_RESOURCE is bit 24 of the effective capabilities.
    cap_eff=$((16#$(awk '/^CapEff/{print $2}' /proc/self/status)))
    if [ $(((cap_eff >> 24) & 1)) -eq 0 ]; then
        runtime="$root/deploy/image/runc-without-rlimits"
        echo "no CAP_SYS_RESOURCE here: podman runs $runtime"
    fi
fi

work="$(mktemp -d /tmp/kraken-podman.XXXXXX)"
P=(podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs --runtime "$runtime"
   --cgroup-manager cgroupfs --events-backend file)
roles=(origin tracker build-index proxy agent)
containerd_pid=""
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        for r in "${roles[@]}"; do
            echo "--- logs of kraken-$r (last 20 lines)" >&2
            "${P[@]}" logs --tail 20 "kraken-$r" >&2 2>/dev/null || true
        done
    fi
    [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
    if [ -z "$keep" ]; then
        for r in "${roles[@]}"; do "${P[@]}" rm -f -t 10 "kraken-$r" >/dev/null 2>&1 || true; done
        "${P[@]}" rmi -a -f >/dev/null 2>&1 || true
        rm -rf "$work"
    else
        echo "kept: $work (podman ${P[*]:1})"
    fi
    exit "$rc"
}
trap cleanup EXIT
step() { echo "== $(date -u +%H:%M:%S) $*"; }

# Waits until a command succeeds, for at most $1 seconds.
wait_for() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out after ${limit}s waiting for: $*" >&2
            return 1
        fi
        sleep 0.5
    done
}

if [ -z "$image" ]; then
    step "image from $bin_dir"
    "$root/deploy/image/build.sh" --binary-dir "$bin_dir" --out "$work/oci" --tag test >/dev/null
    image="$work/oci:test"
fi
step "load $image into podman's storage"
skopeo copy --quiet "oci:$image" "containers-storage:[vfs@$work/storage+$work/run]localhost/kraken:test"
img=localhost/kraken:test
kraken() { "${P[@]}" run --rm --network none --user 0 -v "$work/tls:/tls" "$img" "$@"; }

step "certificates (kraken ca init / cert issue, run from the image)"
mkdir -p "$work/tls"
kraken ca init --dir /tls/ca >/dev/null
for r in "${roles[@]}"; do
    kraken cert issue --ca /tls/ca --name "$r-1" --role "$r" --out /tls/nodes >/dev/null
done
# Each node sees the CA certificate and its own key only, readable by uid 65532.
for r in "${roles[@]}"; do
    mkdir -p "$work/tls-$r"
    cp "$work/tls/ca/ca.crt" "$work/tls-$r/ca.crt"
    cp "$work/tls/nodes/$r-1.crt" "$work/tls-$r/node.crt"
    cp "$work/tls/nodes/$r-1.key" "$work/tls-$r/node.key"
    chown -R 65532:65532 "$work/tls-$r"
done

# Ports: role k listens at base + 10*k (QUIC), +1 gossip, +2 HTTP, +3 registry.
port() { local k=$1 off=$2; echo $((base + 10 * k + off)); }
ring_seeds="\"127.0.0.1:$(port 0 1)\""
view_seed="\"127.0.0.1:$(port 0 0)\""
config() {
    local k=$1 r=$2
    cat <<EOF
[node]
name = "$r-1"
roles = ["$r"]
data_dir = "/var/lib/kraken"

[quic]
listen = "127.0.0.1:$(port "$k" 0)"

[tls]
ca = "/etc/kraken/tls/ca.crt"
cert = "/etc/kraken/tls/node.crt"
key = "/etc/kraken/tls/node.key"

[http]
listen = "127.0.0.1:$(port "$k" 2)"
EOF
    case "$r" in
        origin|tracker|build-index)
            printf '\n[gossip]\nlisten = "127.0.0.1:%s"\nseeds = [%s]\n' "$(port "$k" 1)" "$ring_seeds" ;;
        *)
            printf '\n[view]\nseeds = [%s]\n' "$view_seed" ;;
    esac
    case "$r" in
        origin)
            printf '\n[origin]\nreplicas = 1\n\n[[backends]]\nnamespace = ".*"\n\n[backends.backend.fs]\nroot = "/var/lib/kraken/backend"\n' ;;
        build-index)
            printf '\n[[backends]]\nnamespace = ".*"\n\n[backends.backend.fs]\nroot = "/var/lib/kraken/backend"\n' ;;
        proxy)
            printf '\n[registry]\nlisten = "127.0.0.1:%s"\nallow_anonymous_push = true\n' "$(port "$k" 3)" ;;
        agent)
            printf '\n[registry]\nlisten = "127.0.0.1:%s"\n' "$(port "$k" 3)" ;;
    esac
}

step "one container per role"
k=0
for r in "${roles[@]}"; do
    mkdir -p "$work/conf-$r" "$work/data-$r"
    config $k "$r" >"$work/conf-$r/node.toml"
    chown 65532:65532 "$work/data-$r"
    "${P[@]}" run -d --name "kraken-$r" --network host \
        -v "$work/conf-$r:/etc/kraken/node:ro" -v "$work/tls-$r:/etc/kraken/tls:ro" \
        -v "$work/data-$r:/var/lib/kraken" \
        "$img" "$r" --config /etc/kraken/node/node.toml >/dev/null
    k=$((k + 1))
done
for k in 0 1 2 3 4; do
    wait_for 60 curl -sf "http://127.0.0.1:$(port $k 2)/ready"
done
proxy="127.0.0.1:$(port 3 3)"
agent="127.0.0.1:$(port 4 3)"
step "all five ready; proxy registry $proxy, agent registry $agent"

# The agent names what containerd asks for (?ns=docker.io) docker.io/<repository>.
step "push a generated image through the proxy container (skopeo) as docker.io/library/app:v1"
mkdir -p "$work/src"
umoci init --layout "$work/src/img"
umoci new --image "$work/src/img:v1"
for i in 1 2; do
    head -c $((3000000 / i)) /dev/urandom >"$work/src/payload$i"
    umoci insert --image "$work/src/img:v1" "$work/src/payload$i" "/data/payload$i" >/dev/null
done
umoci gc --layout "$work/src/img"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/src/img:v1" "docker://$proxy/docker.io/library/app:v1"

step "pull it with containerd through the agent container as a mirror"
mkdir -p "$work/containerd/hosts/docker.io"
cat >"$work/containerd/hosts/docker.io/hosts.toml" <<EOF
server = "https://registry-1.docker.io"

[host."http://$agent"]
  capabilities = ["pull", "resolve"]
EOF
sock="$work/containerd/containerd.sock"
cat >"$work/containerd/config.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
address = "$sock"
[ttrpc]
address = "$sock.ttrpc"
EOF
containerd --config "$work/containerd/config.toml" >"$work/containerd/log" 2>&1 &
containerd_pid=$!
wait_for 30 ctr -a "$sock" version
ctr -a "$sock" images pull --hosts-dir "$work/containerd/hosts" docker.io/library/app:v1 >/dev/null

step "compare every blob containerd holds with the pushed ones"
checked=0
for blob in "$work"/src/img/blobs/sha256/*; do
    digest="sha256:$(basename "$blob")"
    # Blobs umoci keeps but no manifest of v1 names are not pulled.
    ctr -a "$sock" content get "$digest" >"$work/pulled" 2>/dev/null || continue
    cmp -s "$blob" "$work/pulled" || { echo "$digest differs from what was pushed" >&2; exit 1; }
    checked=$((checked + 1))
done
manifest="$(ctr -a "$sock" images ls -q | grep -c 'docker.io/library/app:v1')"
[ "$manifest" = 1 ] || { echo "containerd does not list docker.io/library/app:v1" >&2; exit 1; }
[ "$checked" -ge 4 ] || { echo "only $checked blobs came back (manifest, config, two layers expected)" >&2; exit 1; }
step "ok: $checked blobs pulled through the agent container are byte-identical to the pushed image"
