#!/bin/sh
# Regenerates the TEST-ONLY certificates in this directory (ECDSA P-256, 10-year validity).
set -eu
cd "$(dirname "$0")"
DAYS=3650
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

make_ca() { # name CN
    newkey "$1.key"
    openssl req -x509 -new -key "$1.key" -sha256 -days "$DAYS" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out "$1.pem"
}

make_leaf() { # name CN ca extfile-lines
    newkey "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
    printf '%s\n' "$4" > "$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
        -CAserial "$tmp/$3.srl" -sha256 -days "$DAYS" -extfile "$tmp/$1.ext" -out "$1.pem"
}

SERVER_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'
CLIENT_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'

make_ca ca "toudtls test CA"
make_leaf server localhost ca "$SERVER_EXT"
make_leaf client toudtls-test-client ca "$CLIENT_EXT"
make_ca other-ca "toudtls other test CA"
make_leaf other-server localhost other-ca "$SERVER_EXT"
chmod 644 ./*.key ./*.pem
echo "generated test certificates in $(pwd)"
