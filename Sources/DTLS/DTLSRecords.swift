import NIOCore

/// Record framing facts the DTLS layer needs before OpenSSL sees a datagram.
enum DTLSRecords {
    /// Bytes after the last whole record that start with a zero where a record type would be
    /// (no record type is 0): padding, as a cookieless ClientHello carries. 0 if the records fill
    /// the datagram; nil if they do not tile it (left for OpenSSL to refuse).
    static func paddingLength(of datagram: ByteBuffer) -> Int? {
        datagram.withUnsafeReadableBytes { raw in
            var offset = 0
            while offset < raw.count {
                if raw[offset] == 0 { return raw.count - offset }
                guard raw.count - offset >= 13 else { return nil }
                offset += 13 + (Int(raw[offset + 11]) << 8 | Int(raw[offset + 12]))
            }
            return offset == raw.count ? 0 : nil
        }
    }
}
