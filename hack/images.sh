#!/usr/bin/env bash
# Builds the test images offline from Debian packages (a static busybox from Debian's
# busybox source package, nginx from Debian's binary package, a static pause built from
# hack/images/pause.c) and stores them, under the names real clusters use,
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

SEED="$REGISTRY_SEED"
KEY="$(cat "$0" "$REPO_ROOT"/hack/images/* | sha256sum | cut -c1-16)"
[ -f "$SEED/.built-$KEY" ] && exit 0

# The libraries are the ones Debian's nginx links: copied from the host into the images.
apt_install busybox-static umoci skopeo docker-registry gcc libc6-dev make bzip2 \
    libcrypt1 libpcre2-8-0 libssl3 zlib1g
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

# build_busybox: a static busybox with upstream's default applets (`make defconfig`, as
# the busybox images are built), from Debian's busybox source package, cached in
# BUSYBOX_DIR. Debian's own busybox-static lacks applets the CRI suite runs in its
# images (pgrep, ipcs), and its shell runs applets in-process (FEATURE_SH_STANDALONE)
# even when their /bin entry is masked, which upstream's busybox does not.
BUSYBOX_DIR="$NODERT_CACHE/busybox-defconfig"
build_busybox() {
    [ -x "$BUSYBOX_DIR/busybox" ] && return 0
    private_apt "$NODERT_CACHE/apt-src" 's/^Types: deb$/Types: deb deb-src/'
    local src="$WORK/busybox-src" orig tree
    mkdir -p "$src"
    (cd "$src" && apt-get "${PRIVATE_APT_OPTS[@]}" source --download-only -qq busybox 2>&1 |
        grep -v "unsandboxed as root" >&2 || true)
    orig="$(find "$src" -maxdepth 1 -name 'busybox_*.orig.tar.*' | head -1)"
    [ -n "$orig" ] || die "apt-get source --download-only busybox fetched no upstream tarball"
    tar -xf "$orig" -C "$src"
    tree="$(find "$src" -maxdepth 1 -mindepth 1 -type d -name 'busybox-*' | head -1)"
    log "building busybox (defconfig, static) from $(basename "$orig")"
    make -C "$tree" defconfig >/dev/null
    # tc does not build against kernel headers from 6.8 on (CBQ was removed from the uapi).
    sed -i 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/; s/^CONFIG_TC=y/# CONFIG_TC is not set/' "$tree/.config"
    make -C "$tree" -j"$(nproc)" busybox >"$WORK/busybox-build.log" 2>&1 ||
        die "building busybox failed: $(tail -20 "$WORK/busybox-build.log")"
    mkdir -p "$BUSYBOX_DIR"
    install -m 0755 "$tree/busybox" "$BUSYBOX_DIR/busybox.tmp"
    mv "$BUSYBOX_DIR/busybox.tmp" "$BUSYBOX_DIR/busybox"
}
build_busybox
BUSYBOX="$BUSYBOX_DIR/busybox"

# Debian's nginx, unpacked (not installed: its package would start a server on the host).
(cd "$WORK" && apt-get download -qq nginx 2>&1 | grep -v "unsandboxed as root" >&2 || true)
dpkg-deb -x "$(find "$WORK" -maxdepth 1 -name 'nginx_*.deb' | head -1)" "$WORK/nginx-deb" ||
    die "apt-get download nginx produced no package"
NGINX="$WORK/nginx-deb/usr/sbin/nginx"

# rootfs_busybox DIR: a minimal userland with the accounts the USER images refer to.
rootfs_busybox() {
    local r="$1"
    mkdir -p "$r"/{bin,etc,tmp,root,home,var/www,usr/share/nginx/html}
    chmod 1777 "$r/tmp"
    cp "$BUSYBOX" "$r/bin/busybox"
    # Hard links, as in the upstream busybox images (a masked /bin/ls must not mask the
    # binary every applet is); busybox --install would point symlinks at the build dir.
    local applet
    for applet in $("$BUSYBOX" --list); do
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

# rootfs_nginx DIR PORT: Debian's nginx with the shared libraries it links, configured as
# the e2e nginx image is (hack/images/nginx.conf), listening on PORT.
rootfs_nginx() {
    local r="$1" port="$2" lib
    mkdir -p "$r"/{usr/sbin,etc/nginx,var/run,var/log/nginx,var/lib/nginx,usr/share/nginx/html}
    cp "$NGINX" "$r/usr/sbin/nginx"
    for lib in $(ldd "$NGINX" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
    sed "s/LISTEN/$port/" "$REPO_ROOT/hack/images/nginx.conf" >"$r/etc/nginx/nginx.conf"
    echo "<html><body>node-runtime test web server</body></html>" >"$r/usr/share/nginx/html/index.html"
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
rootfs_nginx "$WORK/web" 80
# hostnet-nginx: on the host's network, so on a port of its own (as upstream's image).
rootfs_nginx "$WORK/hostnet-web" 12003
# httpd: says so on stderr when it starts, as Apache does (the multi-container log spec).
mkdir -p "$WORK/httpd/usr/local/apache2/htdocs"
echo "<html><body>It works!</body></html>" >"$WORK/httpd/usr/local/apache2/htdocs/index.html"
mkdir -p "$WORK/nnp"
gcc -static -Os -o "$WORK/nnp/nnp" "$REPO_ROOT/hack/images/nnp.c"
strip "$WORK/nnp/nnp"
chmod 4755 "$WORK/nnp/nnp"
for n in 1 2 3; do mkdir -p "$WORK/marker$n/etc" && echo "test-image-$n" >"$WORK/marker$n/etc/test-image"; done

# --- images ----------------------------------------------------------------------
image pause "" "$WORK/pause" --config.entrypoint /pause --config.user 65535:65535
image busybox "" "$WORK/busybox" --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
nginx_entrypoint=(--config.entrypoint /usr/sbin/nginx --config.entrypoint -g --config.entrypoint "daemon off;")
image web busybox "$WORK/web" --clear=config.cmd "${nginx_entrypoint[@]}" --config.exposedports 80/tcp
image hostnet-web busybox "$WORK/hostnet-web" --clear=config.cmd "${nginx_entrypoint[@]}" \
    --config.exposedports 12003/tcp
image httpd busybox "$WORK/httpd" --clear=config.cmd --config.entrypoint sh --config.entrypoint -c \
    --config.entrypoint 'echo "httpd: serving /usr/local/apache2/htdocs on :80" >&2; exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs' \
    --config.exposedports 80/tcp
# The setuid-root entrypoint of the no-new-privileges spec.
image nonewprivs busybox "$WORK/nnp" --clear=config.cmd --config.entrypoint /nnp
for n in 1 2 3; do image "marker$n" busybox "$WORK/marker$n"; done
empty="$WORK/empty" && mkdir -p "$empty"
image user-uid busybox "$empty" --config.user 1002
image user-username busybox "$empty" --config.user www-data
image user-uid-group busybox "$empty" --config.user 1003:users
image user-username-group busybox "$empty" --config.user www-data:www-data
image predefined-group busybox "$empty" --config.user default-user

# --- seed registry ----------------------------------------------------------------
# Built beside the seed and swapped in at the end: registries starting meanwhile still
# copy the previous seed whole.
FINAL_SEED="$SEED"
SEED="$FINAL_SEED.new"
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
push web registry.k8s.io/e2e-test-images/nginx:1.14-2 docker.io/library/nginx:latest
push hostnet-web "$CRI_TOOLS/hostnet-nginx-amd64:latest"
push httpd registry.k8s.io/e2e-test-images/httpd:2.4.39-4
push nonewprivs registry.k8s.io/e2e-test-images/nonewprivs:1.3
for n in 1 2 3; do push "marker$n" "$CRI_TOOLS/test-image-$n:latest"; done
push user-uid "$CRI_TOOLS/test-image-user-uid:latest"
push user-username "$CRI_TOOLS/test-image-user-username:latest"
push user-uid-group "$CRI_TOOLS/test-image-user-uid-group:latest"
push user-username-group "$CRI_TOOLS/test-image-user-username-group:latest"
push predefined-group "$CRI_TOOLS/test-image-predefined-group:latest"

touch "$SEED/.built-$KEY"
reap_children "$REG_PID" && REG_PID=""
rm -rf "$FINAL_SEED.old"
if [ -d "$FINAL_SEED" ]; then mv "$FINAL_SEED" "$FINAL_SEED.old"; fi
mv "$SEED" "$FINAL_SEED" && rm -rf "$FINAL_SEED.old"
log "test images ready: $(wc -l <"$FINAL_SEED/images.txt") references in $FINAL_SEED"
