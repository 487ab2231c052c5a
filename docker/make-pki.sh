#!/usr/bin/env bash
# A test PKI for a medsilo deployment: a CA, the SuperLink's TLS certificate, and one
# SuperNode key pair (ECDSA P-384, OpenSSH format: the only kind Flower accepts) per node.
#
# Usage: docker/make-pki.sh [--force] [--san SAN]... OUT_DIR [NODE...]
#   NODE      SuperNode names (default: hospital-a hospital-b hospital-c evaluator)
#   --san     an extra subjectAltName for the SuperLink certificate, e.g. DNS:fl.example.org
#             or IP:10.0.0.5 (always included: IP:127.0.0.1, DNS:localhost, DNS:superlink)
#   --force   replace the files of an earlier run in OUT_DIR (nothing else there is touched)
#
# Writes (private keys mode 0600):
#   OUT_DIR/ca.crt  ca.key                   the test CA (keep ca.key off the servers)
#   OUT_DIR/superlink.crt  superlink.key     the SuperLink's TLS certificate and key
#   OUT_DIR/nodes/NODE/node.key  node.key.pub   a SuperNode's authentication key pair
#
# This is a test PKI: a production consortium gets its SuperLink certificate from its own CA.
set -euo pipefail

readonly CA_DAYS=1825
readonly CERT_DAYS=365
readonly DEFAULT_NODES=(hospital-a hospital-b hospital-c evaluator)

usage() {
    sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "make-pki.sh: $*" >&2
    exit 1
}

force=0
extra_sans=()
positional=()
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        --san)
            (($# >= 2)) || die "--san needs a value, e.g. --san DNS:fl.example.org"
            [[ "$2" =~ ^(DNS|IP):[A-Za-z0-9.:*-]+$ ]] || die "--san '$2': expected DNS:NAME or IP:ADDRESS"
            extra_sans+=("$2")
            shift
            ;;
        -h | --help) usage ;;
        --) shift; positional+=("$@"); break ;;
        -*) die "unknown option '$1'" ;;
        *) positional+=("$1") ;;
    esac
    shift
done
((${#positional[@]} >= 1)) || usage

out="${positional[0]}"
nodes=("${positional[@]:1}")
((${#nodes[@]})) || nodes=("${DEFAULT_NODES[@]}")

for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (Debian: apt-get install openssl openssh-client)"
done

declare -A seen=()
for node in "${nodes[@]}"; do
    [[ "$node" =~ ^[a-z0-9][a-z0-9._-]{0,62}$ ]] \
        || die "node name '$node': expected lower-case letters, digits, '.', '_' or '-'"
    [[ -z "${seen[$node]:-}" ]] || die "node name '$node' is given twice"
    seen[$node]=1
done

generated=(ca.crt ca.key superlink.crt superlink.key nodes)
if [[ -e "$out" ]]; then
    [[ -d "$out" ]] || die "'$out' exists and is not a folder"
    if [[ -n "$(ls -A "$out")" ]]; then
        ((force)) || die "'$out' is not empty; refusing to overwrite it (use --force to replace an earlier PKI)"
        for item in "${generated[@]}"; do
            rm -rf -- "${out:?}/$item"
        done
    fi
fi
mkdir -p "$out"

# Everything is made in a private staging folder beside OUT_DIR and moved in at the end,
# so a failure never leaves a half-made PKI behind.
stage="$(mktemp -d "${out%/}.partial.XXXXXX")"
trap 'rm -rf -- "$stage"' EXIT
umask 077

cat >"$stage/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = medsilo test CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

sans="IP:127.0.0.1, DNS:localhost, DNS:superlink"
for san in "${extra_sans[@]}"; do
    sans+=", $san"
done
cat >"$stage/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$stage/ca.key" 2>/dev/null
openssl req -x509 -new -config "$stage/openssl.cnf" -extensions v3_ca -key "$stage/ca.key" \
    -sha384 -days "$CA_DAYS" -out "$stage/ca.crt"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$stage/superlink.key" 2>/dev/null
openssl req -new -config "$stage/openssl.cnf" -key "$stage/superlink.key" -subj "/CN=superlink" \
    -out "$stage/superlink.csr"
openssl x509 -req -in "$stage/superlink.csr" -CA "$stage/ca.crt" -CAkey "$stage/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha384 -days "$CERT_DAYS" \
    -extfile "$stage/server.ext" -out "$stage/superlink.crt" 2>/dev/null
openssl verify -CAfile "$stage/ca.crt" "$stage/superlink.crt" >/dev/null \
    || die "the SuperLink certificate does not verify against the new CA"

mkdir -p "$stage/nodes"
for node in "${nodes[@]}"; do
    mkdir "$stage/nodes/$node"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "medsilo-$node" -f "$stage/nodes/$node/node.key"
done

chmod 0644 "$stage/ca.crt" "$stage/superlink.crt" "$stage"/nodes/*/node.key.pub
chmod 0600 "$stage/ca.key" "$stage/superlink.key" "$stage"/nodes/*/node.key
chmod 0755 "$stage/nodes" "$stage"/nodes/*
for item in "${generated[@]}"; do
    mv -- "$stage/$item" "$out/$item"
done

echo "test PKI written to $out:"
echo "  CA            $out/ca.crt (key: $out/ca.key)"
echo "  SuperLink     $out/superlink.crt  SAN: $sans"
for node in "${nodes[@]}"; do
    echo "  SuperNode     $out/nodes/$node/node.key (.pub: register with 'flwr supernode register')"
done
