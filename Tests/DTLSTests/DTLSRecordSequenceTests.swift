@testable import DTLS
import Foundation
import NIOCore
import Testing

/// One record sequence per epoch and direction: whoever writes a record (OpenSSL's handshake
/// retransmissions and alerts, or our record layer), its `(epoch, sequence)` is new. With
/// ChaCha20-Poly1305 a repeat is a repeated nonce.
@Suite struct DTLSRecordSequenceTests {
    /// Loses the server's CCS+Finished once. The server, already done, sends data; the client
    /// resends its flight, the server's OpenSSL resends its Finished; then data moves both ways.
    @Test(arguments: DTLSCipherSuite.allCases)
    func lostServerFinishedIsResentWithAFreshSequenceNumber(suite: DTLSCipherSuite) throws {
        let pair = try Pair.losingTheServersFinished(client: Certs.client(cipherSuites: [suite]))
        let server = try #require(pair.server)
        try #require(pair.serverEvents == [.handshakeCompleted])
        try #require(pair.clientEvents.isEmpty)

        // The server may talk at once; the client holds what arrives before its handshake ends.
        var serverData: [ByteBuffer] = []
        for text in ["s1", "s2"] {
            try server.writeApplicationData(ByteBuffer(string: text))
            let datagram = try #require(server.pollDatagram())
            serverData.append(datagram)
            pair.client.receiveDatagram(datagram, now: pair.now)
        }
        #expect(pair.client.readApplicationData() == nil)

        try pair.resendClientFlight()
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.client.negotiatedCipherSuite == suite.openSSLName(rsa: false))
        #expect(pair.client.readApplicationData() == ByteBuffer(string: "s1"))
        #expect(pair.client.readApplicationData() == ByteBuffer(string: "s2"))

        var clientData: [ByteBuffer] = []
        for index in 0..<3 {
            try pair.client.writeApplicationData(ByteBuffer(string: "c\(index)"))
            clientData.append(try #require(pair.client.pollDatagram()))
            try server.writeApplicationData(ByteBuffer(string: "s\(index + 3)"))
            serverData.append(try #require(server.pollDatagram()))
        }
        for datagram in clientData { server.receiveDatagram(datagram, now: pair.now) }
        for datagram in serverData.dropFirst(2) { pair.client.receiveDatagram(datagram, now: pair.now) }
        for index in 0..<3 {
            #expect(server.readApplicationData() == ByteBuffer(string: "c\(index)"))
            #expect(pair.client.readApplicationData() == ByteBuffer(string: "s\(index + 3)"))
        }
        let serverRecords = RecordList(pair.serverSent + serverData)
        let clientRecords = RecordList(pair.clientSent + clientData)
        // The server's Finished went out twice: once lost, once resent after its data records.
        #expect(serverRecords.filter { $0.epoch == 1 && $0.type == 22 }.count == 2)
        #expect(serverRecords.repeatedSequenceNumbers.isEmpty, "server repeated \(serverRecords.repeatedSequenceNumbers)")
        #expect(clientRecords.repeatedSequenceNumbers.isEmpty, "client repeated \(clientRecords.repeatedSequenceNumbers)")
        // Held until the client's handshake completed, then opened: nothing counted as dropped.
        #expect(pair.client.droppedRecords == 0)
    }
}

@Suite struct DTLSEarlyDataTests {
    /// The server finishes first and sends data while the client's handshake is still open: the
    /// client holds at most 8 such records, opens each whole through its record layer once its
    /// handshake completes, and drops a later replay of one like any other.
    @Test func recordsBeforeTheHandshakeCompletesAreHeldBoundedAndEnterTheReplayWindow() throws {
        let pair = try Pair.losingTheServersFinished(client: Certs.client())
        let server = try #require(pair.server)
        let payloads = (0..<10).map { ByteBuffer.pattern($0 == 0 ? 1400 : 100, seed: UInt8($0)) }
        var early: [ByteBuffer] = []
        for payload in payloads {
            try server.writeApplicationData(payload)
            early.append(try #require(server.pollDatagram()))
            pair.client.receiveDatagram(early.last!, now: pair.now)
        }
        #expect(pair.client.droppedRecords == 2)

        try pair.resendClientFlight()
        try #require(pair.clientEvents == [.handshakeCompleted])
        for payload in payloads.prefix(DTLSConnection.maximumEarlyRecords) {
            #expect(pair.client.readApplicationData() == payload)
        }
        #expect(pair.client.readApplicationData() == nil)
        pair.client.receiveDatagram(early[0], now: pair.now)
        #expect(pair.client.readApplicationData() == nil)
        #expect(pair.client.replayedRecords == 1)
        // The two that did not fit are new to the window: TCP's retransmission would be taken.
        pair.client.receiveDatagram(early[9], now: pair.now)
        #expect(pair.client.readApplicationData() == payloads[9])
    }
}

extension Pair {
    /// A handshake in which the server's first datagram with an epoch-1 record (its CCS and
    /// Finished) is lost: the server has completed, the client waits for its retransmission timer.
    static func losingTheServersFinished(client: DTLSContext) throws -> Pair {
        let pair = try Pair(client: client, server: Certs.server())
        pair.now = .now()
        var lostFinished = false
        pair.deliverToClient = { datagram in
            guard !lostFinished, RecordList(datagram).contains(where: { $0.epoch == 1 }) else { return true }
            lostFinished = true
            return false
        }
        pair.handshake()
        try #require(lostFinished)
        try #require(pair.clientEvents.isEmpty && pair.serverEvents == [.handshakeCompleted])
        return pair
    }

    /// Waits out the client's retransmission timer (OpenSSL's own clock), then moves datagrams.
    func resendClientFlight() throws {
        let deadline = try #require(client.nextDeadline)
        Thread.sleep(forTimeInterval: Double((deadline - .now()).nanoseconds) / 1e9 + 0.05)
        now = .now()
        client.handleTimeout(now: now)
        shuttle()
    }
}

/// `(type, epoch, sequence)` of every record in some datagrams, in order.
struct RecordList: RandomAccessCollection {
    struct Record: Equatable {
        let type: UInt8
        let epoch: UInt16
        let sequence: UInt64
        /// For a handshake record, the type of the message it starts with.
        let firstBodyByte: UInt8?
    }
    private(set) var records: [Record] = []

    init(_ datagram: ByteBuffer) { self.init([datagram]) }

    init(_ datagrams: [ByteBuffer]) {
        for datagram in datagrams {
            datagram.withUnsafeReadableBytes { raw in
                var offset = 0
                while raw.count - offset >= 13 {
                    let length = Int(raw[offset + 11]) << 8 | Int(raw[offset + 12])
                    let sequence = (5..<11).reduce(UInt64(0)) { $0 << 8 | UInt64(raw[offset + $1]) }
                    let first = length > 0 && offset + 13 < raw.count ? raw[offset + 13] : nil
                    records.append(Record(type: raw[offset], epoch: UInt16(raw[offset + 3]) << 8 | UInt16(raw[offset + 4]),
                                          sequence: sequence, firstBodyByte: first))
                    offset += 13 + length
                }
            }
        }
    }

    var startIndex: Int { records.startIndex }
    var endIndex: Int { records.endIndex }
    subscript(position: Int) -> Record { records[position] }

    /// `(epoch, sequence)` pairs sent more than once.
    var repeatedSequenceNumbers: [String] {
        var seen = Set<UInt64>()
        return records.compactMap { record in
            let key = UInt64(record.epoch) << 48 | record.sequence
            return seen.insert(key).inserted ? nil : "epoch \(record.epoch) sequence \(record.sequence) (type \(record.type))"
        }
    }
}

@Suite struct DTLSEarlyRecordTests {
    /// A forged epoch-1 record shorter than the AES-GCM nonce + tag, arriving at the server
    /// before the client's CCS, must be dropped, not fail the handshake in OpenSSL.
    @Test(arguments: [16, 20, 23])
    func shortEpochOneRecordBeforeTheClientsCCSIsDropped(length: Int) throws {
        let pair = try Pair(client: Certs.client(cipherSuites: [.aes256GCM]), server: Certs.server())
        var injected = false
        pair.deliverToClient = { _ in
            if !injected, let server = pair.server {
                injected = true
                var forged = ByteBuffer(bytes: [22, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 0])
                forged.writeInteger(UInt16(length))
                forged.writeRepeatingByte(0x42, count: length)
                server.receiveDatagram(forged, now: pair.now)
            }
            return true
        }
        pair.handshake()
        #expect(injected)
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
    }
}

/// DTLS 1.2 cannot rekey: a key that has protected as much as it safely can, or has seen too
/// many forgeries, ends the session with a clear error instead of being used on.
@Suite struct DTLSKeyUsageLimitTests {
    private func establishedPair(_ suite: DTLSCipherSuite) throws -> (Pair, DTLSConnection) {
        let pair = try Pair(client: Certs.client(cipherSuites: [suite]), server: Certs.server())
        pair.handshake()
        try #require(pair.clientEvents == [.handshakeCompleted])
        return (pair, try #require(pair.server))
    }

    /// Each 1,400-byte record costs 88 cipher blocks plus one for the record (RFC 8446 5.5's unit).
    @Test(arguments: DTLSCipherSuite.allCases)
    func sealingPastTheUsageLimitEndsTheSessionWithAClearError(suite: DTLSCipherSuite) throws {
        let (pair, server) = try establishedPair(suite)
        pair.client.lowerKeyLimitsForTesting(usage: 3 * 89, failedOpens: .max)
        for _ in 0..<3 {
            try pair.client.writeApplicationData(ByteBuffer.pattern(1400))
            server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
        }
        let sequence = pair.client.nextSequenceForTesting
        #expect(throws: DTLSError.self) { try pair.client.writeApplicationData(ByteBuffer.pattern(1400)) }
        #expect(pair.client.pollDatagram() == nil)
        #expect(pair.client.nextSequenceForTesting == sequence)  // no number was used up
        #expect(pair.client.state == .failed)
        guard case .failed(.keyUsageLimitReached(let detail))? = pair.client.pollEvent() else {
            Issue.record("expected a key usage limit failure")
            return
        }
        #expect(detail.contains("open a new connection"))
        for _ in 0..<3 { #expect(server.readApplicationData()?.readableBytes == 1400) }
    }

    @Test func tooManyRecordsFailingAuthenticationEndTheSession() throws {
        let (pair, server) = try establishedPair(.chacha20Poly1305)
        server.lowerKeyLimitsForTesting(usage: .max, failedOpens: 3)
        for index in 0..<3 {
            try pair.client.writeApplicationData(ByteBuffer(string: "record \(index)"))
            var forged = try #require(pair.client.pollDatagram())
            forged.setInteger(forged.getInteger(at: forged.writerIndex - 1, as: UInt8.self)! ^ 1, at: forged.writerIndex - 1)
            server.receiveDatagram(forged, now: pair.now)
            #expect(server.readApplicationData() == nil)
            #expect(server.state == (index < 2 ? .established : .failed))
        }
        guard case .failed(.keyUsageLimitReached(let detail))? = server.pollEvent() else {
            Issue.record("expected a key usage limit failure")
            return
        }
        #expect(detail.contains("3 records failed authentication"))
    }

    /// The 48-bit sequence space ends before a number could repeat; the error says which limit.
    @Test func theLastSequenceNumberIsNeverUsed() throws {
        let (pair, server) = try establishedPair(.aes128GCM)
        pair.client.moveSequenceForTesting(to: (1 << 48) - 2)
        try pair.client.writeApplicationData(ByteBuffer(string: "last"))
        let last = try #require(pair.client.pollDatagram())
        #expect(RecordList(last).first?.sequence == (1 << 48) - 2)
        server.receiveDatagram(last, now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "last"))
        #expect(throws: DTLSError.self) { try pair.client.writeApplicationData(ByteBuffer(string: "one too many")) }
        guard case .failed(.keyUsageLimitReached(let detail))? = pair.client.pollEvent() else {
            Issue.record("expected a key usage limit failure")
            return
        }
        #expect(detail.contains("2^48 record sequence numbers"))
    }
}
