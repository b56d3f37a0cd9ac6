import DTLS
import NIOCore
import Testing

@Suite struct DTLSListenTests {
    private let cookie: [UInt8] = Array(repeating: 0xab, count: 32)

    private func clientHello() throws -> (DTLSConnection, ByteBuffer) {
        let client = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400)
        client.startHandshake(now: .uptimeNanoseconds(0))
        return (client, try #require(client.pollDatagram()))
    }

    @Test func cookieExchange() throws {
        let server = try Certs.server()
        let (client, hello) = try clientHello()
        #expect(client.nextDeadline != nil)

        // No cookie: a HelloVerifyRequest smaller than the ClientHello (no amplification).
        guard case .helloVerifyRequest(let hvr) = server.listen(
            datagram: hello, cookieToIssue: cookie, acceptableCookies: [cookie], mtu: 1400, now: .uptimeNanoseconds(0))
        else {
            Issue.record("no HelloVerifyRequest")
            return
        }
        #expect(hvr.readableBytes < hello.readableBytes)
        #expect(hvr.getInteger(at: 0, as: UInt8.self) == 22)
        #expect(hvr.getInteger(at: 13, as: UInt8.self) == 3)  // hello_verify_request

        client.receiveDatagram(hvr, now: .uptimeNanoseconds(0))
        let helloWithCookie = try #require(client.pollDatagram())
        #expect(helloWithCookie.readableBytes > hello.readableBytes)

        // A cookie we no longer accept: answered with a fresh HelloVerifyRequest, no state.
        let otherCookie: [UInt8] = Array(repeating: 0xcd, count: 32)
        guard case .helloVerifyRequest = server.listen(
            datagram: helloWithCookie, cookieToIssue: otherCookie, acceptableCookies: [otherCookie], mtu: 1400,
            now: .uptimeNanoseconds(0))
        else {
            Issue.record("wrong cookie was not answered with a HelloVerifyRequest")
            return
        }

        // The right cookie (among several acceptable ones): accepted, first flight ready.
        guard case .accepted(let connection) = server.listen(
            datagram: helloWithCookie, cookieToIssue: otherCookie, acceptableCookies: [otherCookie, cookie],
            mtu: 1400, now: .uptimeNanoseconds(0))
        else {
            Issue.record("right cookie was not accepted")
            return
        }
        #expect(connection.state == .handshaking)
        #expect(connection.nextDeadline != nil)
        let flight = try #require(connection.pollDatagram())
        #expect(flight.getInteger(at: 13, as: UInt8.self) == 2)  // server_hello
    }

    @Test func garbageIsDroppedWithoutAnswer() throws {
        let server = try Certs.server()
        let (_, hello) = try clientHello()
        var inputs: [ByteBuffer] = [
            ByteBuffer(),
            ByteBuffer(bytes: [22]),
            ByteBuffer(bytes: [23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]),
            ByteBuffer(bytes: Array(repeating: 0xff, count: 300)),
            hello.getSlice(at: 0, length: 40)!,
        ]
        // A ClientHello whose record length claims more than is there.
        var lying = hello
        lying.setInteger(UInt16(4000), at: 11)
        inputs.append(lying)
        // Random bytes after a valid record header.
        var random = ByteBuffer(bytes: [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64])
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<64 { random.writeInteger(UInt8.random(in: 0...255, using: &generator)) }
        inputs.append(random)

        for input in inputs {
            guard case .dropped = server.listen(
                datagram: input, cookieToIssue: cookie, acceptableCookies: [cookie], mtu: 1400,
                now: .uptimeNanoseconds(0))
            else {
                Issue.record("\(input.readableBytes)-byte garbage was not dropped")
                continue
            }
        }
        // A client context cannot listen.
        guard case .dropped = try Certs.client().listen(
            datagram: hello, cookieToIssue: cookie, acceptableCookies: [], mtu: 1400, now: .uptimeNanoseconds(0))
        else {
            Issue.record("client context listened")
            return
        }
    }

    @Test func fuzzedDatagramsNeverCrashAConnection() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        pair.handshake()
        let server = try #require(pair.server)
        var generator = SystemRandomNumberGenerator()
        try pair.client.writeApplicationData(ByteBuffer.pattern(200))
        let valid = try #require(pair.client.pollDatagram())
        for round in 0..<3_000 {
            var datagram = valid
            let flips = Int.random(in: 1...4, using: &generator)
            for _ in 0..<flips {
                let at = Int.random(in: 0..<datagram.readableBytes, using: &generator)
                datagram.setInteger(UInt8.random(in: 0...255, using: &generator), at: at)
            }
            if round % 5 == 0 { datagram.moveWriterIndex(to: Int.random(in: 0...datagram.writerIndex, using: &generator)) }
            if round % 7 == 0 { datagram.setInteger(UInt16.random(in: 0...300, using: &generator), at: 11) }
            server.receiveDatagram(datagram, now: pair.now)
            pair.client.receiveDatagram(datagram, now: pair.now)
            if let event = server.pollEvent() ?? pair.client.pollEvent() {
                Issue.record("\(event) after \(Array(datagram.readableBytesView.prefix(16)))")
                break
            }
        }
        #expect(server.state == .established)
        #expect(pair.client.state == .established)
        server.receiveDatagram(valid, now: pair.now)
        #expect(server.readApplicationData() == ByteBuffer.pattern(200))
    }
}

/// A listener not under pressure takes a ClientHello without a cookie exchange: one round trip
/// less. Padding after the records (the initiator's proof it cannot be used to amplify) is ignored.
@Suite struct DTLSCookielessListenTests {
    @Test func aCookielessClientHelloIsAcceptedAtOnce() throws {
        let pair = try Pair(client: Certs.client(), server: Certs.server())
        pair.requireCookie = false
        pair.handshake()
        #expect(pair.helloVerifyRequests == 0)
        #expect(pair.clientEvents == [.handshakeCompleted])
        #expect(pair.serverEvents == [.handshakeCompleted])
    }

    @Test func aPaddedClientHelloIsAcceptedAndItsPaddingIgnored() throws {
        let context = try Certs.server()
        let client = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400)
        client.startHandshake(now: .now())
        var hello = try #require(client.pollDatagram())
        hello.writeRepeatingByte(0, count: 1200 - hello.readableBytes)
        guard case .accepted(let server) = context.listen(datagram: hello, cookieToIssue: [1], acceptableCookies: [],
                                                         requireCookie: false, mtu: 1400, now: .now()) else {
            Issue.record("a padded cookieless ClientHello was not accepted")
            return
        }
        // The server's flight answers it; a padded retransmission reaching the session is harmless.
        #expect(server.pollDatagram() != nil)
        server.receiveDatagram(hello, now: .now())
        #expect(server.state == .handshaking)
        // With a cookie required, the same datagram gets a HelloVerifyRequest.
        guard case .helloVerifyRequest = context.listen(datagram: hello, cookieToIssue: [1], acceptableCookies: [],
                                                        mtu: 1400, now: .now()) else {
            Issue.record("a cookie was required but none was asked for")
            return
        }
    }

    @Test func junkIsDroppedWithoutACookieToo() throws {
        let context = try Certs.server()
        for junk in [ByteBuffer(bytes: [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0]),
                     ByteBuffer(bytes: [UInt8](repeating: 0x16, count: 300))] {
            guard case .dropped = context.listen(datagram: junk, cookieToIssue: [1], acceptableCookies: [],
                                                 requireCookie: false, mtu: 1400, now: .now()) else {
                Issue.record("junk made a connection")
                continue
            }
        }
    }
}
