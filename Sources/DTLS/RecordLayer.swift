import CTOUOpenSSL
import NIOCore

/// Application-data records of an established connection, protected and checked here with the
/// negotiated AEAD and OpenSSL's own keys instead of through SSL_write/SSL_read: the same bytes on
/// the wire, without OpenSSL's per-record state machine, BIO round trip and plaintext copies.
/// Handshake records and alerts from the peer stay with OpenSSL.
///
/// The sealer holds the one sequence counter of the epoch: the shim re-seals under it whatever
/// OpenSSL writes in the epoch after the takeover, so no `(epoch, sequence)` is ever sent twice.
/// Both AEAD contexts belong to the DTLS connection's handle, which outlives this view.
final class RecordLayer {
    private let sealer: OpaquePointer
    private let opener: OpaquePointer
    let epoch: UInt16
    let overhead: Int
    /// The smallest valid protected body: explicit nonce (AES-GCM) and tag.
    var shortestBody: Int { overhead - 13 }

    init?(connection handle: OpaquePointer) {
        var sealer: OpaquePointer?
        var opener: OpaquePointer?
        var epoch: UInt16 = 0
        guard tou_dtls_conn_record_layer(handle, &sealer, &opener, &epoch) == 1,
              let sealer, let opener else { return nil }
        self.sealer = sealer
        self.opener = opener
        self.epoch = epoch
        self.overhead = tou_aead_overhead(sealer)
    }

    /// The sequence number the next record will carry.
    var nextSequence: UInt64 { tou_aead_next_sequence(sealer) }

    /// Records that failed authentication under the peer's key so far.
    var failedOpens: UInt64 { tou_aead_failed_opens(opener) }

    /// So many forgeries failed that the key must not be trusted further (RFC 9147 4.5.3).
    var integrityLimitReached: Bool { tou_aead_integrity_limit_reached(opener) != 0 }

    /// Appends one record of `type` protecting `first` then `second` to `buffer` under the next
    /// sequence number; returns its length. On failure nothing is appended and no number is used.
    func seal(type: UInt8, _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer,
              appendingTo buffer: inout ByteBuffer) throws(DTLSError) -> Int {
        let room = first.count + second.count + overhead
        var length = -1
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { out in
            length = tou_aead_seal(sealer, type,
                                   first.baseAddress?.assumingMemoryBound(to: UInt8.self), first.count,
                                   second.baseAddress?.assumingMemoryBound(to: UInt8.self), second.count,
                                   out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count)
            return max(length, 0)
        }
        guard length <= 0 else { return length }
        switch length {
        case TOU_SEAL_E_TOO_LONG:
            throw .protocolError("plaintext of \(first.count + second.count) bytes; one record carries 1...16384")
        case TOU_SEAL_E_NO_ROOM:
            throw .protocolError("no room for a \(room)-byte record in the output buffer")
        case TOU_SEAL_E_SEQUENCE_EXHAUSTED:
            throw .keyUsageLimitReached("all 2^48 record sequence numbers of epoch \(epoch) are used; "
                                        + "DTLS 1.2 cannot rekey, so open a new connection")
        case TOU_SEAL_E_USAGE_LIMIT:
            throw .keyUsageLimitReached("the AES-GCM key has protected 2^34 cipher blocks (about 250 GB), "
                                        + "its safe limit; DTLS 1.2 cannot rekey, so open a new connection")
        default:
            throw .protocolError("encrypting a record failed in the cipher")
        }
    }

    /// Authenticates and decrypts one whole record (header included); nil if it does not
    /// authenticate. A full-size record's plaintext is a slice of the shared `arena`, a small
    /// one's a buffer of its own.
    func open(_ record: UnsafeRawBufferPointer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        // The whole body: AES-GCM decrypts it in place (see tou_aead_open), the rest needs less.
        let room = max(record.count - 13, 0)
        var start = 0
        if room >= PlaintextArena.smallestRecord {
            let length = open(record, into: arena.space(room, allocator: allocator), plaintextAt: &start)
            return length >= 0 ? arena.take(skipping: start, length: length) : nil
        }
        var plaintext = allocator.buffer(capacity: room)
        var length = -1
        plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { out in
            length = open(record, into: out, plaintextAt: &start)
            return length >= 0 ? start + length : 0
        }
        guard length >= 0 else { return nil }
        plaintext.moveReaderIndex(forwardBy: start)
        return plaintext
    }

    /// The plaintext's length (-1: not authentic); it starts `plaintextAt` bytes into `out`.
    private func open(_ record: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer,
                      plaintextAt start: inout Int) -> Int {
        tou_aead_open(opener, record.baseAddress?.assumingMemoryBound(to: UInt8.self), record.count,
                      out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count, &start)
    }

    @exclusivity(unchecked) private var arena = PlaintextArena()

    /// Lets go of the arena's unused rest (the slices handed out keep their part): a connection
    /// that has gone quiet holds none.
    func releaseArena() {
        arena = PlaintextArena()
    }

    /// Tests only: the counter restarted at `sequence`, to reach the end of the sequence space.
    func moveSequence(to sequence: UInt64) {
        tou_aead_start_sequence(sealer, epoch, sequence)
    }

    /// Tests only: lower limits, reachable without sealing 250 GB or receiving 2^36 forgeries.
    func setLimits(usage: UInt64, failedOpens: UInt64) {
        tou_aead_set_limits(sealer, usage, UInt64.max)
        tou_aead_set_limits(opener, UInt64.max, failedOpens)
    }
}

/// Memory that full-size records are decrypted into one after another, each record's plaintext
/// handed out as a slice: one allocation per 64 KiB instead of one per record (a full record's
/// buffer is past malloc's per-thread cache, and allocating and freeing them took 9% of a bulk
/// receiver's CPU).
///
/// The slices share the buffer's storage, so the buffer is never written through ByteBuffer's API
/// (that would copy it whole). The bytes past `used`, which no slice covers, are written through
/// `base`, taken while the buffer was new and unshared; its storage stays where it is for as long
/// as `buffer` holds it, since nothing resizes it.
struct PlaintextArena {
    /// Smaller records (request/response) take a buffer each: one that small comes from malloc's
    /// per-thread cache, and a connection that moves little holds no arena.
    static let smallestRecord = 1_024
    static let size = 64 << 10

    private var buffer: ByteBuffer?
    private var base: UnsafeMutableRawPointer?
    private var capacity = 0
    private var used = 0

    /// At least `count` bytes to write one record into; a new buffer when the current one has no room.
    mutating func space(_ count: Int, allocator: ByteBufferAllocator) -> UnsafeMutableRawBufferPointer {
        if let base, capacity - used >= count {
            return UnsafeMutableRawBufferPointer(start: base + used, count: count)
        }
        var fresh = allocator.buffer(capacity: max(count, Self.size))
        let start = fresh.withUnsafeMutableWritableBytes { $0.baseAddress! }
        // Every byte becomes sliceable; only the written ones are ever handed out.
        fresh.moveWriterIndex(to: fresh.capacity)
        capacity = fresh.capacity
        buffer = fresh
        base = start
        used = 0
        return UnsafeMutableRawBufferPointer(start: start, count: count)
    }

    /// The `length` bytes written `skipping` bytes into the last `space`, as a slice; the space
    /// up to their end is used.
    mutating func take(skipping offset: Int, length: Int) -> ByteBuffer? {
        guard let slice = buffer?.getSlice(at: used + offset, length: length) else { return nil }
        used += offset + length
        return slice
    }
}
