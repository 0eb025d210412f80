#!/usr/bin/env bash
# Builds the test images offline from Debian packages (busybox-static, a static pause
# built from hack/images/pause.c) and stores them, under the names real clusters use,
# in a seed copy of registry storage at $NODERT_CACHE/registry-seed. hack/registry.sh
# serves a private copy of that seed, so every registry starts full in milliseconds.
#
# Repositories are stored as <upstream host>/<path> (e.g. registry.k8s.io/pause), so one
# local registry can stand in for several upstream registries: a runtime mirrors
# `registry.k8s.io` to http://<local>/registry.k8s.io and unmodified manifests work.
#
# Rebuilds only when this script or hack/images/ change.
. "$(dirname "$0")/lib.sh"
require_root

SEED="$NODERT_CACHE/registry-seed"
KEY="$(cat "$0" "$REPO_ROOT"/hack/images/* | sha256sum | cut -c1-16)"
[ -f "$SEED/.built-$KEY" ] && exit 0

apt_install busybox-static umoci skopeo docker-registry gcc libc6-dev
log "building test images (seed $KEY)"
WORK="$(mktemp -d "$NODERT_CACHE/images-build.XXXXXX")"
REG_PID=""
cleanup() {
    if [ -n "$REG_PID" ]; then reap_children "$REG_PID"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
LAYOUT="$WORK/oci"
umoci init --layout "$LAYOUT"

# rootfs_busybox DIR: a minimal userland with the accounts the USER images refer to.
rootfs_busybox() {
    local r="$1"
    mkdir -p "$r"/{bin,etc,tmp,root,home,var/www,usr/share/nginx/html}
    chmod 1777 "$r/tmp"
    cp /bin/busybox "$r/bin/busybox"
    # Hard links, as in the upstream busybox images (a masked /bin/ls must not mask the
    # binary every applet is); busybox --install would point symlinks at the build dir.
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln "$r/bin/busybox" "$r/bin/$applet"
    done
    mkdir -p "$r/usr/bin" && ln -s ../../bin/busybox "$r/usr/bin/env"
    cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
default-user:x:1000:1000:default-user:/home:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
www-data:x:33:
users:x:100:
default-user:x:1000:
group-defined-in-image:x:50000:default-user
nogroup:x:65534:
EOF
    echo "hosts: files dns" >"$r/etc/nsswitch.conf"
}

# image TAG FROM_TAG DIR [umoci config flags...]: FROM_TAG plus a layer holding DIR's
# contents at /, with the given config. FROM_TAG "" starts from scratch.
image() {
    local tag="$1" from="$2" dir="$3"; shift 3
    if [ -z "$from" ]; then
        umoci new --image "$LAYOUT:$tag"
    else
        umoci config --image "$LAYOUT:$from" --tag "$tag"
    fi
    # GNU tar, not `umoci insert`: umoci 0.4.7's insert leaves the last entry unpadded
    # and drops the end-of-archive blocks, which strict tar readers reject.
    local layer="$WORK/layer-$tag.tar"
    tar --numeric-owner --owner=0 --group=0 --sort=name -C "$dir" -cf "$layer" .
    umoci raw add-layer --image "$LAYOUT:$tag" "$layer"
    rm -f "$layer"
    [ $# -eq 0 ] || umoci config --image "$LAYOUT:$tag" "$@"
}

# --- layers ----------------------------------------------------------------------
rootfs_busybox "$WORK/busybox"
mkdir -p "$WORK/pause"
gcc -static -Os -o "$WORK/pause/pause" "$REPO_ROOT/hack/images/pause.c"
strip "$WORK/pause/pause"
mkdir -p "$WORK/web/usr/share/nginx/html"
echo "<html><body>node-runtime test web server</body></html>" >"$WORK/web/usr/share/nginx/html/index.html"
for n in 1 2 3; do mkdir -p "$WORK/marker$n/etc" && echo "test-image-$n" >"$WORK/marker$n/etc/test-image"; done

# --- images ----------------------------------------------------------------------
image pause "" "$WORK/pause" --config.entrypoint /pause --config.user 65535:65535
image busybox "" "$WORK/busybox" --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The web server answers on :80 like nginx in the e2e images (busybox httpd).
image web busybox "$WORK/web" --clear=config.cmd \
    --config.entrypoint httpd --config.entrypoint -f --config.entrypoint -p --config.entrypoint 80 \
    --config.entrypoint -h --config.entrypoint /usr/share/nginx/html --config.exposedports 80/tcp
for n in 1 2 3; do image "marker$n" busybox "$WORK/marker$n"; done
empty="$WORK/empty" && mkdir -p "$empty"
image user-uid busybox "$empty" --config.user 1002
image user-username busybox "$empty" --config.user www-data
image user-uid-group busybox "$empty" --config.user 1003:users
image user-username-group busybox "$empty" --config.user www-data:www-data
image predefined-group busybox "$empty" --config.user default-user

# --- seed registry ----------------------------------------------------------------
rm -rf "$SEED" && mkdir -p "$SEED"
port="$(free_port)"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $SEED/storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
wait_for "the seed registry" 30 curl -sf "http://127.0.0.1:$port/v2/"

# push TAG NAME...: NAME is the upstream reference, stored under its host as a path prefix.
# Each repository gets its own image (TAG plus a layer naming the repository), as in the
# real registries: runtimes list every tag of an image ID, so repositories sharing one
# image would report each other's tags. Tags within one repository do share it.
declare -A REPO_IMAGE=()
push() {
    local tag="$1"; shift
    local name repo variant
    for name in "$@"; do
        repo="${name%:*}"
        variant="${REPO_IMAGE[$repo]:-}"
        if [ -z "$variant" ]; then
            variant="repo${#REPO_IMAGE[@]}"
            mkdir -p "$WORK/$variant/etc"
            echo "$repo" >"$WORK/$variant/etc/nodert-image"
            image "$variant" "$tag" "$WORK/$variant"
            REPO_IMAGE[$repo]="$variant"
        fi
        skopeo --insecure-policy copy -q --dest-tls-verify=false \
            "oci:$LAYOUT:$variant" "docker://127.0.0.1:$port/$name"
        echo "$name" >>"$SEED/images.txt"
    done
}
CRI_TOOLS=gcr.io/k8s-staging-cri-tools
push pause registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.9 registry.k8s.io/pause:3.2 \
    k8s.gcr.io/pause:3.2
push busybox registry.k8s.io/e2e-test-images/busybox:1.29-2 docker.io/library/busybox:latest \
    docker.io/library/busybox:1.36 \
    "$CRI_TOOLS/test-image-latest:latest" "$CRI_TOOLS/test-image-tag:test" "$CRI_TOOLS/test-image-tag:all" \
    "$CRI_TOOLS/test-image-tags:1" "$CRI_TOOLS/test-image-tags:2" "$CRI_TOOLS/test-image-tags:3"
push web registry.k8s.io/e2e-test-images/nginx:1.14-2 docker.io/library/nginx:latest \
    registry.k8s.io/e2e-test-images/httpd:2.4.39-4 \
    "$CRI_TOOLS/hostnet-nginx-amd64:latest"
for n in 1 2 3; do push "marker$n" "$CRI_TOOLS/test-image-$n:latest"; done
push user-uid "$CRI_TOOLS/test-image-user-uid:latest"
push user-username "$CRI_TOOLS/test-image-user-username:latest"
push user-uid-group "$CRI_TOOLS/test-image-user-uid-group:latest"
push user-username-group "$CRI_TOOLS/test-image-user-username-group:latest"
push predefined-group "$CRI_TOOLS/test-image-predefined-group:latest"

touch "$SEED/.built-$KEY"
log "test images ready: $(wc -l <"$SEED/images.txt") references in $SEED"
