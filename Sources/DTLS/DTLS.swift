// DTLS module.
