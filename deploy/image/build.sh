#!/usr/bin/env bash
# Builds kraken's container image as an OCI layout directory with umoci: no Docker daemon,
# no base image. The image holds the two binaries (stripped copies), the few glibc files
# they link (found with ldd), the system CA bundle (S3/GCS backends and upstream registries
# use HTTPS), /etc/passwd with the non-root user kraken (uid and gid 65532) and its data
# directory /var/lib/kraken. Entrypoint: kraken.
#
# Reproducible: every file, the layer and the config carry the time of the last commit
# (SOURCE_DATE_EPOCH, unless already set), the layer's entries are walked in sorted order
# and owned by fixed ids, so two builds from the same binaries have the same digest.
#
#   deploy/image/build.sh [--binary-dir target/release] [--out target/image/oci]
#                         [--tag VERSION] [--copy DEST]
#
# --copy hands the result to `skopeo copy`, e.g. docker://registry.example:5000/kraken:0.1.0
# or containers-storage:localhost/kraken:0.1.0 (podman). The last line printed is the
# manifest digest.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="$root/target/release"
out="$root/target/image/oci"
tag=""
copy=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary-dir) bin_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --copy) copy="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in umoci ldd strip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed (apt-get install umoci binutils)" >&2; exit 1; }
done
for b in kraken krakenctl; do
    [ -x "$bin_dir/$b" ] || {
        echo "build.sh: $bin_dir/$b is missing; build it with cargo build --release -p kraken-node --bin kraken -p kraken-tools --bin krakenctl (or pass --binary-dir)" >&2
        exit 1
    }
done
if [ -z "$tag" ]; then
    tag="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
uid=65532

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

# The file tree of the one layer.
mkdir -p "$rootfs"/{usr/local/bin,etc/kraken/tls,etc/ssl/certs,var/lib/kraken,tmp}
for b in kraken krakenctl; do
    strip -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
    chmod 0755 "$rootfs/usr/local/bin/$b"
done
# The shared libraries at the paths the binaries ask for (the dynamic loader's path is
# absolute in the ELF header; the others are found in /lib/x86_64-linux-gnu and the like).
for b in kraken krakenctl; do
    ldd "$rootfs/usr/local/bin/$b" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'
done | sort -u | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    chmod 0755 "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nkraken:x:%s:%s:kraken:/var/lib/kraken:/sbin/nologin\n' "$uid" "$uid" >"$rootfs/etc/passwd"
printf 'root:x:0:\nkraken:x:%s:\n' "$uid" >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs"/etc/{passwd,group,nsswitch.conf} "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$rootfs/tmp"
chmod 0750 "$rootfs/var/lib/kraken"
chown -R 0:0 "$rootfs"
chown "$uid:$uid" "$rootfs/var/lib/kraken"
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# The image: a fresh layout, the layer from the tree, then the config. Every step sets
# the creation time of its history entry and of the config, which default to now.
rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
mkdir -p "$work/bundle"
umoci unpack --image "$out:$tag" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs"
mv "$rootfs" "$work/bundle/rootfs"
umoci repack --image "$out:$tag" --history.created "$created" --history.created_by "deploy/image/build.sh" \
    --history.comment "kraken and krakenctl with the libraries they link" "$work/bundle"
umoci config --image "$out:$tag" --created "$created" --history.created "$created" \
    --history.created_by "deploy/image/build.sh" \
    --author "kraken" --architecture amd64 --os linux \
    --config.user "$uid:$uid" \
    --config.entrypoint /usr/local/bin/kraken \
    --config.workingdir /var/lib/kraken \
    --config.env PATH=/usr/local/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.volume /var/lib/kraken \
    --config.label "org.opencontainers.image.title=kraken" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label "org.opencontainers.image.created=$created"
umoci gc --layout "$out"

size="$(du -sb "$out/blobs" | cut -f1)"
digest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$out/index.json")"
echo "image: $out:$tag ($((size / 1024 / 1024)) MiB compressed, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
if [ -n "$copy" ]; then
    skopeo copy --quiet "oci:$out:$tag" "$copy"
    echo "copied to $copy"
fi
echo "$digest"
