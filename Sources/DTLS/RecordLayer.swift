import CTOUOpenSSL
import NIOCore

/// Application-data records of an established connection, protected and checked here with the
/// negotiated AEAD and OpenSSL's own keys instead of through SSL_write/SSL_read: the same bytes on
/// the wire, without OpenSSL's per-record state machine, BIO round trip and plaintext copies.
/// Handshake records and alerts from the peer stay with OpenSSL.
final class RecordLayer {
    private let sealer: OpaquePointer
    private let opener: OpaquePointer
    let epoch: UInt16
    /// Continues after OpenSSL's last record in this epoch (its Finished), so sequence numbers
    /// stay unique and increasing for the peer's anti-replay window.
    private var nextSequence: UInt64
    let overhead: Int
    /// The smallest valid protected body: explicit nonce (AES-GCM) and tag.
    var shortestBody: Int { overhead - 13 }

    init?(connection handle: OpaquePointer) {
        var sealer: OpaquePointer?
        var opener: OpaquePointer?
        var epoch: UInt16 = 0
        var next: UInt64 = 0
        guard tou_dtls_conn_record_layer(handle, &sealer, &opener, &epoch, &next) == 1,
              let sealer, let opener else { return nil }
        self.sealer = sealer
        self.opener = opener
        self.epoch = epoch
        self.nextSequence = next
        self.overhead = tou_aead_overhead(sealer)
    }

    deinit {
        tou_aead_free(sealer)
        tou_aead_free(opener)
    }

    /// Appends one record of `type` protecting `first` then `second` to `buffer`; returns its length,
    /// or nil (nothing appended) when the sequence space is exhausted.
    func seal(type: UInt8, _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer,
              appendingTo buffer: inout ByteBuffer) -> Int? {
        let room = first.count + second.count + overhead
        var length = -1
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { out in
            length = tou_aead_seal(sealer, type, epoch, nextSequence,
                                   first.baseAddress?.assumingMemoryBound(to: UInt8.self), first.count,
                                   second.baseAddress?.assumingMemoryBound(to: UInt8.self), second.count,
                                   out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count)
            return max(length, 0)
        }
        guard length > 0 else { return nil }
        nextSequence += 1
        return length
    }

    /// Authenticates and decrypts one whole record (header included) into a new buffer; nil if it
    /// does not authenticate.
    func open(_ record: UnsafeRawBufferPointer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let room = max(record.count - overhead, 0)
        var plaintext = allocator.buffer(capacity: room)
        var length = -1
        plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { out in
            length = tou_aead_open(opener, record.baseAddress?.assumingMemoryBound(to: UInt8.self), record.count,
                                   out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count)
            return max(length, 0)
        }
        return length >= 0 ? plaintext : nil
    }
}
