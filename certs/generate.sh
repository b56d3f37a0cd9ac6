#!/bin/sh
# Regenerates the TEST-ONLY certificates in this directory (ECDSA P-256, 10-year validity),
# plus two leaf certificates with fixed dates (expired, not yet valid) for negative tests.
# `./generate.sh --dated-only` remakes just the dated ones under the existing CA;
# `./generate.sh --big-chain-only` just the large RSA-4096 chain.
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

# A leaf with explicit validity dates (YYYYMMDDHHMMSSZ). OpenSSL 3.0's `req -x509` and
# `x509 -req` only take -days, so this signs through `openssl ca`, which takes -startdate/-enddate.
make_dated_leaf() { # name CN ca startdate enddate extfile-lines
    newkey "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
    printf '%s\n' "$6" > "$tmp/$1.ext"
    rm -rf "$tmp/ca-db"
    mkdir "$tmp/ca-db"
    : > "$tmp/ca-db/index.txt"
    openssl rand -hex 16 > "$tmp/ca-db/serial"
    printf '%s\n' '[ ca ]' 'default_ca = dated' '[ dated ]' \
        "database = $tmp/ca-db/index.txt" "serial = $tmp/ca-db/serial" "new_certs_dir = $tmp/ca-db" \
        'default_md = sha256' 'policy = anything' 'unique_subject = no' \
        '[ anything ]' 'commonName = supplied' > "$tmp/ca.cnf"
    openssl ca -batch -notext -config "$tmp/ca.cnf" -cert "$3.pem" -keyfile "$3.key" \
        -startdate "$4" -enddate "$5" -extfile "$tmp/$1.ext" \
        -in "$tmp/$1.csr" -out "$1.pem" 2>"$tmp/ca.log" || { cat "$tmp/ca.log" >&2; exit 1; }
}

SERVER_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'
CLIENT_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'
# Both usages, so the dated certificates also serve as expired / not-yet-valid client certificates.
DATED_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'

# A chain too large to answer within 3x a 1,200-byte ClientHello (about 5 KB of RSA-4096
# certificates): the listener must wait for the client's retransmission before sending it all.
make_big_chain() {
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out big-ca.key
    openssl req -x509 -new -key big-ca.key -sha256 -days "$DAYS" -subj "/CN=toudtls big test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out big-ca.pem
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$tmp/big-intermediate.key"
    openssl req -new -key "$tmp/big-intermediate.key" -subj "/CN=toudtls big intermediate CA" -out "$tmp/i.csr"
    printf '%s\n' 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign' \
        'subjectKeyIdentifier=hash' > "$tmp/i.ext"
    openssl x509 -req -in "$tmp/i.csr" -CA big-ca.pem -CAkey big-ca.key -CAcreateserial -CAserial "$tmp/big.srl" \
        -sha256 -days "$DAYS" -extfile "$tmp/i.ext" -out "$tmp/big-intermediate.pem"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out big-server.key
    openssl req -new -key big-server.key -subj "/CN=localhost" -out "$tmp/s.csr"
    printf '%s\n' "$SERVER_EXT" > "$tmp/s.ext"
    openssl x509 -req -in "$tmp/s.csr" -CA "$tmp/big-intermediate.pem" -CAkey "$tmp/big-intermediate.key" \
        -CAcreateserial -CAserial "$tmp/big.srl" -sha256 -days "$DAYS" -extfile "$tmp/s.ext" -out "$tmp/big-leaf.pem"
    cat "$tmp/big-leaf.pem" "$tmp/big-intermediate.pem" big-ca.pem > big-server.pem
}

make_dated() {
    make_dated_leaf expired-server localhost ca 20200101000000Z 20210101000000Z "$DATED_EXT"
    make_dated_leaf future-server localhost ca 20700101000000Z 20800101000000Z "$DATED_EXT"
}

if [ "${1:-}" = "--big-chain-only" ]; then
    make_big_chain
    chmod 644 big-*
    echo "generated the big test chain in $(pwd)"
    exit 0
fi

if [ "${1:-}" = "--dated-only" ]; then
    make_dated
    chmod 644 expired-server.* future-server.*
    echo "generated the dated test certificates in $(pwd)"
    exit 0
fi

make_ca ca "toudtls test CA"
make_leaf server localhost ca "$SERVER_EXT"
make_leaf client toudtls-test-client ca "$CLIENT_EXT"
make_ca other-ca "toudtls other test CA"
make_leaf other-server localhost other-ca "$SERVER_EXT"
make_dated
make_big_chain
chmod 644 ./*.key ./*.pem
echo "generated test certificates in $(pwd)"
