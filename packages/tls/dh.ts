/**
 * The Diffie-Hellman group a TLS server endpoint of QEMU is given. QEMU 7.2 generates a fresh
 * 2048-bit group in its main thread when its tls-creds directory has no `dh-params.pem`: 0.6 to
 * 3.5 s on an idle 2-core host, over 15 s for a niced QEMU on a loaded one (the migration
 * target's `object-add` timed out). RFC 7919's ffdhe2048 is a published, vetted group; with
 * TLS 1.3 and ECDHE it is not even used.
 */
export const FFDHE2048_PEM = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`;
