#!/usr/bin/env bash
# Install the real programs dtr's tests run against (shared/reference/test-peers.md).
# Go peers go to ~/.cache/dtr/peers/<tool>-<version>/ (outside the checkout, kept between
# CI runs); Debian peers through apt; the npm peer (oidc-provider, pinned with its lockfile in
# tests/support/oidc/) to ~/.cache/dtr/peers/oidc-provider-<version>/node_modules.
# Idempotent: a peer already installed is skipped.
# Usage: scripts/install-peers.sh [peer ...]   (no argument = every peer)
set -euo pipefail

PEERS_DIR="${DTR_PEERS_DIR:-$HOME/.cache/dtr/peers}"
mkdir -p "$PEERS_DIR"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# name | binary | go package@version | extra go flags | how
# how: empty = `go install pkg@version`; "module" = build inside a throwaway module
# (test-peers.md §1 "plan B"), for modules whose `go install` fails although the pinned
# version is served: notation's install stops at the deprecation lookup (the module proxy
# refuses to list github.com/notaryproject/notation's versions).
GO_PEERS=(
  "minio|minio|github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c|"
  "distribution|registry|github.com/distribution/distribution/v3/cmd/registry@v3.1.1|"
  "conformance|conformance|github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111|-ldflags=-X=main.Version=97274622c111"
  "crane|crane|github.com/google/go-containerregistry/cmd/crane@v0.21.9|"
  "oras|oras|oras.land/oras/cmd/oras@v1.3.6|"
  "regctl|regctl|github.com/regclient/regclient/cmd/regctl@v0.11.5|"
  "helm|helm|helm.sh/helm/v3/cmd/helm@v3.21.4|"
  "cosign|cosign|github.com/sigstore/cosign/v3/cmd/cosign@v3.1.2|"
  "notation|notation|github.com/notaryproject/notation/cmd/notation@v1.3.2||module"
)
DEBIAN_PEERS=(skopeo podman)

want() {  # want NAME: true if NAME was asked for (or nothing was)
  [ "${#ARGS[@]}" -eq 0 ] && return 0
  local a; for a in "${ARGS[@]}"; do [ "$a" = "$1" ] && return 0; done; return 1
}

ARGS=("$@")

for row in "${DEBIAN_PEERS[@]}"; do
  want "$row" || continue
  if ! command -v "$row" >/dev/null 2>&1; then
    echo "peers: installing Debian package $row"
    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$row" >/dev/null
  fi
done

# rsyslog: the syslog receiver of the audit forwarding tests (imtcp; rsyslog-gnutls adds
# the TLS driver, a module with no command of its own, so its package status is checked).
if want rsyslog && ! { [ -x /usr/sbin/rsyslogd ] \
    && dpkg-query -W -f='${Status}' rsyslog-gnutls 2>/dev/null | grep -q 'ok installed'; }; then
  echo "peers: installing Debian packages rsyslog rsyslog-gnutls"
  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog rsyslog-gnutls >/dev/null
fi

if want postgresql && ! [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo "peers: installing Debian package postgresql"
  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

for row in "${GO_PEERS[@]}"; do
  IFS='|' read -r name bin pkg flags how <<<"$row"
  want "$name" || continue
  version="${pkg##*@}"
  dir="$PEERS_DIR/$name-$version"
  if [ -x "$dir/$bin" ]; then continue; fi
  echo "peers: go ${how:-install} $pkg"
  start=$(date +%s)
  mkdir -p "$dir.tmp"
  if [ "$how" = "module" ]; then
    mod="${pkg%@*}"; mod="${mod%/cmd/*}"
    work="$(mktemp -d)"
    (cd "$work" && go mod init example.invalid/peer >/dev/null 2>&1 \
      && GOFLAGS="-mod=mod" go get "$mod@$version" \
      && GOFLAGS="-mod=mod" CGO_ENABLED=0 go build ${flags:+"$flags"} -o "$dir.tmp/$bin" "${pkg%@*}")
    rm -rf "$work"
  else
    # shellcheck disable=SC2086
    GOBIN="$dir.tmp" GOFLAGS="-mod=mod" CGO_ENABLED=0 go install ${flags:+"$flags"} "$pkg"
  fi
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  echo "peers: $name ready in $(( $(date +%s) - start ))s"
done

if want oidc-provider; then
  # npm peer: the exact versions of tests/support/oidc/package-lock.json, installed with
  # `npm ci` into a folder named after the pinned version. A changed lockfile reinstalls.
  src="$ROOT/tests/support/oidc"
  command -v node >/dev/null 2>&1 || { echo "peers: oidc-provider needs Node.js 20+ and npm" >&2; exit 1; }
  version="$(node -p "require(process.argv[1]).dependencies['oidc-provider']" "$src/package.json")"
  dir="$PEERS_DIR/oidc-provider-$version"
  if ! { [ -f "$dir/node_modules/oidc-provider/package.json" ] \
         && cmp -s "$src/package-lock.json" "$dir/package-lock.json"; }; then
    echo "peers: npm ci oidc-provider@$version"
    start=$(date +%s)
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    cp "$src/package.json" "$src/package-lock.json" "$dir.tmp/"
    (cd "$dir.tmp" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
    echo "peers: oidc-provider ready in $(( $(date +%s) - start ))s"
  fi
fi
