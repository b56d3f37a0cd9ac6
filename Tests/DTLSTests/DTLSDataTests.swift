import DTLS
import NIOCore
import Testing

@Suite struct DTLSDataTests {
    private func establishedPair(mtu: Int = 1400) throws -> (Pair, DTLSConnection) {
        let pair = try Pair(client: Certs.client(), server: Certs.server(), mtu: mtu)
        pair.handshake()
        try #require(pair.clientEvents == [.handshakeCompleted])
        try #require(pair.serverEvents == [.handshakeCompleted])
        return (pair, try #require(pair.server))
    }

    @Test func fullSizeRecordBothWaysIgnoresTheHandshakeMTU() throws {
        // 1,460 bytes of plaintext is far above what a 600-byte handshake MTU leaves room for.
        let (pair, server) = try establishedPair(mtu: 600)
        let payload = ByteBuffer.pattern(1460)
        try pair.client.writeApplicationData(payload)
        let datagram = try #require(pair.client.pollDatagram())
        #expect(pair.client.pollDatagram() == nil)
        #expect(datagram.readableBytes == 1460 + pair.client.recordOverhead)
        #expect(datagram.getInteger(at: 0, as: UInt8.self) == 23)
        server.receiveDatagram(datagram, now: pair.now)
        #expect(server.readApplicationData() == payload)
        #expect(server.readApplicationData() == nil)
        #expect(server.lastDatagramAdvancedReceiveWindow)

        let big = ByteBuffer.pattern(16_384, seed: 7)
        try server.writeApplicationData(big)
        let reply = try #require(server.pollDatagram())
        #expect(reply.readableBytes == 16_384 + 37)
        pair.client.receiveDatagram(reply, now: pair.now)
        #expect(pair.client.readApplicationData() == big)
    }

    @Test func severalRecordsInOneDatagramComeOutSeparately() throws {
        let (pair, server) = try establishedPair()
        let payloads = [ByteBuffer(string: "one"), ByteBuffer.pattern(700), ByteBuffer(string: "three")]
        var datagram = ByteBuffer()
        for payload in payloads {
            try pair.client.writeApplicationData(payload)
            var record = try #require(pair.client.pollDatagram())
            datagram.writeBuffer(&record)
        }
        server.receiveDatagram(datagram, now: pair.now)
        for payload in payloads {
            #expect(server.readApplicationData() == payload)
        }
        #expect(server.readApplicationData() == nil)
        #expect(server.droppedRecords == 0)
    }

    @Test func fullSizeRecordsShareMemoryWithoutOverwritingEachOther() throws {
        // Full-size records are decrypted back to back into shared 64 KiB buffers: each plaintext
        // handed out stays intact while later ones are opened, forgeries between them included,
        // across buffers, a 16 KiB record, and a release of the buffer in between.
        let (pair, server) = try establishedPair()
        var held: [ByteBuffer] = []
        var expected: [ByteBuffer] = []
        for index in 0..<120 {
            let payload = ByteBuffer.pattern(index == 60 ? 16_384 : 1_024 + 3 * index, seed: UInt8(index))
            try pair.client.writeApplicationData(payload)
            let datagram = try #require(pair.client.pollDatagram())
            if index % 25 == 7 {
                // A forged copy first: it fails, and takes neither the space nor the sequence number.
                var forged = datagram
                forged.setInteger(forged.getInteger(at: 40, as: UInt8.self)! ^ 0x80, at: 40)
                server.receiveDatagram(forged, now: pair.now)
                #expect(server.readApplicationData() == nil)
            }
            server.receiveDatagram(datagram, now: pair.now)
            held.append(try #require(server.readApplicationData()))
            expected.append(payload)
            if index == 90 { server.releaseReceiveArena() }
        }
        #expect(held.count == expected.count)
        let damaged = zip(held, expected).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
        #expect(damaged == [], "records whose plaintext changed after it was handed out")
        #expect(server.droppedRecords == 5)
    }

    @Test func tamperedRecordIsDroppedAndCounted() throws {
        let (pair, server) = try establishedPair()
        try pair.client.writeApplicationData(ByteBuffer(string: "secret"))
        var datagram = try #require(pair.client.pollDatagram())
        let last = datagram.writerIndex - 1
        datagram.setInteger(datagram.getInteger(at: last, as: UInt8.self)! ^ 0x01, at: last)
        server.receiveDatagram(datagram, now: pair.now)
        #expect(server.readApplicationData() == nil)
        #expect(server.droppedRecords == 1)
        #expect(server.state == .established)
        #expect(server.pollEvent() == nil)
        #expect(!server.lastDatagramAdvancedReceiveWindow)

        // Truncated records and foreign content types are dropped too; the session survives.
        server.receiveDatagram(ByteBuffer(bytes: [23, 0xfe, 0xfd, 0, 1]), now: pair.now)
        server.receiveDatagram(ByteBuffer(bytes: [99, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 1, 0]), now: pair.now)
        server.receiveDatagram(ByteBuffer(bytes: [23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0]), now: pair.now)
        #expect(server.droppedRecords == 4)
        #expect(server.state == .established)

        try pair.client.writeApplicationData(ByteBuffer(string: "after"))
        server.receiveDatagram(try #require(pair.client.pollDatagram()), now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "after"))
    }

    /// OpenSSL 3.0 would fail the session on these; the layer must drop them instead.
    @Test(arguments: [1, 8, 16, 23])
    func protectedRecordShorterThanNonceAndTagIsDropped(length: Int) throws {
        let (pair, server) = try establishedPair()
        try pair.client.writeApplicationData(ByteBuffer.pattern(200))
        var datagram = try #require(pair.client.pollDatagram())
        datagram.setInteger(UInt16(length), at: 11)
        datagram.moveWriterIndex(to: 13 + length)
        server.receiveDatagram(datagram, now: pair.now)
        #expect(server.state == .established)
        #expect(server.pollEvent() == nil)
        #expect(server.droppedRecords == 1)
    }

    @Test func replayedRecordIsDeliveredOnce() throws {
        let (pair, server) = try establishedPair()
        try pair.client.writeApplicationData(ByteBuffer(string: "first"))
        let first = try #require(pair.client.pollDatagram())
        try pair.client.writeApplicationData(ByteBuffer(string: "second"))
        let second = try #require(pair.client.pollDatagram())

        server.receiveDatagram(second, now: pair.now)
        #expect(server.lastDatagramAdvancedReceiveWindow)
        server.receiveDatagram(first, now: pair.now)   // reordered, not a replay
        #expect(!server.lastDatagramAdvancedReceiveWindow)
        server.receiveDatagram(first, now: pair.now)   // replay
        server.receiveDatagram(second, now: pair.now)  // replay
        #expect(server.readApplicationData() == ByteBuffer(string: "second"))
        #expect(server.readApplicationData() == ByteBuffer(string: "first"))
        #expect(server.readApplicationData() == nil)
        #expect(server.droppedRecords == 2)
        #expect(server.replayedRecords == 2)
    }

    @Test func recordsMoreThan64BehindAreTooOld() throws {
        let (pair, server) = try establishedPair()
        var records: [ByteBuffer] = []
        for i in 0..<70 {
            try pair.client.writeApplicationData(ByteBuffer(string: "r\(i)"))
            records.append(try #require(pair.client.pollDatagram()))
        }
        server.receiveDatagram(records[69], now: pair.now)
        server.receiveDatagram(records[0], now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "r69"))
        #expect(server.readApplicationData() == nil)
        #expect(server.tooOldRecords == 1)
        #expect(server.droppedRecords == 1)
    }

    @Test func closeNotifyIsReportedAndEndsWriting() throws {
        let (pair, server) = try establishedPair()
        pair.client.sendCloseNotify()
        #expect(pair.client.state == .closed)
        #expect(throws: DTLSError.self) { try pair.client.writeApplicationData(ByteBuffer(string: "late")) }
        let alert = try #require(pair.client.pollDatagram())
        #expect(alert.getInteger(at: 0, as: UInt8.self) == 21)
        server.receiveDatagram(alert, now: pair.now)
        #expect(server.pollEvent() == .closeNotifyReceived)
        #expect(server.state == .closed)
        // The receiver of a close_notify may still send what it has, then its own close_notify.
        try server.writeApplicationData(ByteBuffer(string: "last words"))
        server.sendCloseNotify()
        pair.client.receiveDatagram(try #require(server.pollDatagram()), now: pair.now)
        pair.client.receiveDatagram(try #require(server.pollDatagram()), now: pair.now)
        #expect(pair.client.readApplicationData() == ByteBuffer(string: "last words"))
        #expect(pair.client.pollEvent() == .closeNotifyReceived)
    }

    /// Our record layer takes over where OpenSSL's Finished (epoch 1, sequence 0) left off, and
    /// the AES-GCM explicit nonce is the record's own epoch and sequence number.
    @Test func dataRecordsContinueTheEpochAfterFinishedWithTheSequenceAsNonce() throws {
        let (pair, server) = try establishedPair()
        #expect(pair.client.protectsRecordsItself)
        #expect(server.protectsRecordsItself)
        for (index, sender, receiver) in [(0, pair.client, server), (1, pair.client, server), (0, server, pair.client)] {
            let payload = ByteBuffer(string: "record \(index)")
            var datagram = ByteBuffer()
            try sender.writeApplicationData(header: ByteBuffer(string: "rec"), payload: ByteBuffer(string: "ord \(index)"),
                                            appendingTo: &datagram)
            #expect(datagram.getInteger(at: 3, as: UInt16.self) == 1)
            let sequence = datagram.getBytes(at: 5, length: 6)!.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            #expect(sequence == UInt64(index + 1))
            #expect(datagram.getBytes(at: 13, length: 8) == datagram.getBytes(at: 3, length: 8))
            #expect(datagram.getInteger(at: 11, as: UInt16.self) == UInt16(payload.readableBytes + 8 + 16))
            receiver.receiveDatagram(datagram, now: pair.now)
            #expect(receiver.readApplicationData() == payload)
            #expect(receiver.lastDatagramAdvancedReceiveWindow)
        }
        #expect(server.droppedRecords == 0)
        #expect(pair.client.droppedRecords == 0)
    }

    @Test func recordFromAnotherEpochOrWithTheWrongLengthIsDropped() throws {
        let (pair, server) = try establishedPair()
        try pair.client.writeApplicationData(ByteBuffer(string: "payload"))
        let datagram = try #require(pair.client.pollDatagram())
        var otherEpoch = datagram
        otherEpoch.setInteger(UInt16(2), at: 3)
        var truncated = datagram
        truncated.moveWriterIndex(to: datagram.writerIndex - 1)
        truncated.setInteger(UInt16(truncated.readableBytes - 13), at: 11)
        server.receiveDatagram(otherEpoch, now: pair.now)
        server.receiveDatagram(truncated, now: pair.now)
        #expect(server.readApplicationData() == nil)
        #expect(server.droppedRecords == 2)
        #expect(server.state == .established)
        server.receiveDatagram(datagram, now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer(string: "payload"))
    }

    @Test func writingBeforeTheHandshakeThrows() throws {
        let client = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400)
        #expect(throws: DTLSError.self) { try client.writeApplicationData(ByteBuffer(string: "early")) }
        #expect(client.negotiatedCipherSuite == nil)
        #expect(client.recordOverhead == 0)
    }
}
