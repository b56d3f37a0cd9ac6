import DTLS
import Foundation
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `openssl` command, if installed: a DTLS peer nobody here wrote.
private let opensslPath: String? = ["/usr/bin/openssl", "/usr/local/bin/openssl", "/bin/openssl"]
    .first { FileManager.default.isExecutableFile(atPath: $0) }

/// A connected, non-blocking-ish UDP socket on loopback for talking to the openssl process.
private final class UDPSocket {
    let fd: Int32

    init(connectTo port: UInt16? = nil, bindPort: UInt16 = 0) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr("127.0.0.1")
        local.sin_port = bindPort.bigEndian
        _ = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if let port {
            var remote = local
            remote.sin_port = port.bigEndian
            _ = withUnsafePointer(to: &remote) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
    }

    deinit { close(fd) }

    var localPort: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    func send(_ datagram: ByteBuffer) {
        _ = datagram.withUnsafeReadableBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
    }

    /// Receives one datagram and connects the socket to its sender, so replies go back there.
    func receiveAndConnect() -> ByteBuffer? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var from = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let n = withUnsafeMutablePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &length) }
        }
        guard n > 0 else { return nil }
        _ = withUnsafePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        return ByteBuffer(bytes: buffer[0..<n])
    }

    func receive() -> ByteBuffer? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return nil }
        return ByteBuffer(bytes: buffer[0..<n])
    }
}

/// Runs `openssl s_server -dtls1_2`, collecting its stdout.
private final class OpenSSLProcess: @unchecked Sendable {
    let process = Process()
    private let output = Pipe()
    private let input = Pipe()
    private let lock = NSLock()
    private var collected = Data()

    convenience init(port: UInt16, certificate: String = "server", cipher: String? = nil) throws {
        try self.init(arguments: ["s_server", "-dtls1_2", "-accept", "127.0.0.1:\(port)",
                                  "-cert", Certs.path("\(certificate).pem"), "-key", Certs.path("\(certificate).key"),
                                  "-mtu", "1400"] + (cipher.map { ["-cipher", $0] } ?? []))
    }

    init(arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: opensslPath ?? "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = output
        process.standardError = output
        process.standardInput = input
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            self.lock.lock()
            self.collected.append(data)
            self.lock.unlock()
        }
        try process.run()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: collected, as: UTF8.self)
    }

    func write(_ string: String) {
        input.fileHandleForWriting.write(Data(string.utf8))
    }

    func stop() {
        output.fileHandleForReading.readabilityHandler = nil
        // SIGKILL: the child inherits a signal mask from the test runner that can block SIGTERM.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

@Suite(.serialized) struct DTLSOpenSSLInteropTests {
    /// Each AEAD suite both ways: our record layer seals what OpenSSL's SSL_read opens, and opens
    /// what OpenSSL's SSL_write sealed, so its key expansion and record format are OpenSSL's.
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"),
          arguments: [(nil, "ECDHE-ECDSA-AES256-GCM-SHA384"),
                      ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                      ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305")])
    func clientHandshakesWithOpenSSLServer(cipher: String?, suite: String) throws {
        let port = try UDPSocket().localPort  // a free port, released for the server to take
        let server = try OpenSSLProcess(port: port, cipher: cipher)
        defer { server.stop() }
        Thread.sleep(forTimeInterval: 0.3)

        let socket = try UDPSocket(connectTo: port)
        let client = try DTLSConnection(client: Certs.client(), serverName: "localhost", mtu: 1400)
        client.startHandshake(now: .now())
        var events: [DTLSEvent] = []
        var received = ""
        let start = NIODeadline.now()
        var sentHello = false
        while NIODeadline.now() < start + .seconds(10) {
            while let datagram = client.pollDatagram() { socket.send(datagram) }
            if let datagram = socket.receive() { client.receiveDatagram(datagram, now: .now()) }
            if let deadline = client.nextDeadline, deadline <= .now() { client.handleTimeout(now: .now()) }
            while let event = client.pollEvent() { events.append(event) }
            while var data = client.readApplicationData() { received += data.readString(length: data.readableBytes) ?? "" }
            if events.contains(.handshakeCompleted), !sentHello {
                #expect(client.protectsRecordsItself)
                // Two records: the second, split header/payload, has the next sequence number.
                try client.writeApplicationData(ByteBuffer(string: "hello "))
                var second = ByteBuffer()
                try client.writeApplicationData(header: ByteBuffer(string: "from "), payload: ByteBuffer(string: "toudtls\n"),
                                                appendingTo: &second)
                while let datagram = client.pollDatagram() { socket.send(datagram) }
                socket.send(second)
                server.write("hello from openssl\n")
                sentHello = true
            }
            if sentHello, server.text.contains("hello from toudtls"), received.contains("hello from openssl") { break }
            if events.contains(where: { if case .failed = $0 { return true } else { return false } }) { break }
        }
        #expect(events.first == .handshakeCompleted, "events: \(events); openssl said: \(server.text)")
        #expect(server.text.contains("hello from toudtls"))
        #expect(received.contains("hello from openssl"))
        #expect(client.negotiatedCipherSuite == suite)
        // OpenSSL opens our close_notify too: s_server says DONE on a clean shutdown (SSL_ERROR_ZERO_RETURN).
        client.sendCloseNotify()
        while let datagram = client.pollDatagram() { socket.send(datagram) }
        let closeDeadline = NIODeadline.now() + .seconds(5)
        while NIODeadline.now() < closeDeadline, !server.text.contains("DONE") {
            Thread.sleep(forTimeInterval: 0.02)
        }
        #expect(server.text.contains("DONE"), "openssl said: \(server.text)")
    }

    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"))
    func serverAcceptsOpenSSLClientThroughCookieExchange() throws {
        let socket = try UDPSocket()
        let context = try Certs.server()
        let client = try OpenSSLProcess(arguments: [
            "s_client", "-dtls1_2", "-connect", "127.0.0.1:\(socket.localPort)", "-mtu", "1400",
            "-CAfile", Certs.path("ca.pem"), "-verify_return_error", "-servername", "localhost",
        ])
        defer { client.stop() }
        let cookie: [UInt8] = Array("interop-cookie".utf8)
        var connection: DTLSConnection?
        var helloVerifyRequests = 0
        var events: [DTLSEvent] = []
        var received = ""
        var sentHello = false
        let start = NIODeadline.now()
        while NIODeadline.now() < start + .seconds(10) {
            if let connection {
                if let datagram = socket.receive() { connection.receiveDatagram(datagram, now: .now()) }
                if let deadline = connection.nextDeadline, deadline <= .now() { connection.handleTimeout(now: .now()) }
                while let datagram = connection.pollDatagram() { socket.send(datagram) }
                while let event = connection.pollEvent() { events.append(event) }
                while var data = connection.readApplicationData() {
                    received += data.readString(length: data.readableBytes) ?? ""
                }
                if events.contains(.handshakeCompleted), !sentHello {
                    #expect(connection.protectsRecordsItself)
                    client.write("hello from openssl\n")
                    try connection.writeApplicationData(ByteBuffer(string: "hello from toudtls\n"))
                    while let datagram = connection.pollDatagram() { socket.send(datagram) }
                    sentHello = true
                }
                if received.contains("hello from openssl"), client.text.contains("hello from toudtls") { break }
                if events.contains(where: { if case .failed = $0 { return true } else { return false } }) { break }
            } else if let datagram = socket.receiveAndConnect() {
                switch context.listen(datagram: datagram, cookieToIssue: cookie, acceptableCookies: [cookie],
                                      mtu: 1400, now: .now()) {
                case .helloVerifyRequest(let hvr):
                    helloVerifyRequests += 1
                    socket.send(hvr)
                case .accepted(let accepted):
                    connection = accepted
                    while let datagram = accepted.pollDatagram() { socket.send(datagram) }
                case .dropped:
                    break
                }
            }
        }
        #expect(helloVerifyRequests >= 1)
        #expect(events.first == .handshakeCompleted, "events: \(events); openssl said: \(client.text)")
        #expect(received.contains("hello from openssl"))
        #expect(client.text.contains("hello from toudtls"))
        #expect(client.text.contains("Verify return code: 0 (ok)"))
    }

    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"))
    func clientRefusesOpenSSLServersExpiredCertificateAndUnpinnedKey() throws {
        let expired = try handshakeWithOpenSSLServer(certificate: "expired-server", client: Certs.client())
        guard case .failed(.untrustedCertificate(let detail))? = expired.first else {
            Issue.record("events: \(expired)")
            return
        }
        #expect(detail.hasPrefix("certificate has expired"))

        let serverPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("server.pem"))
        let caPin = try DTLSContext.publicKeySHA256(ofCertificatePEM: Certs.bytes("ca.pem"))
        let pinned = try handshakeWithOpenSSLServer(
            certificate: "server",
            client: DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), pinnedPublicKeySHA256: [serverPin]))
        #expect(pinned.first == .handshakeCompleted, "events: \(pinned)")
        let unpinned = try handshakeWithOpenSSLServer(
            certificate: "server",
            client: DTLSContext.client(trustRootsPEM: Certs.bytes("ca.pem"), pinnedPublicKeySHA256: [caPin]))
        guard case .failed(.pinMismatch(let pinDetail))? = unpinned.first else {
            Issue.record("events: \(unpinned)")
            return
        }
        #expect(pinDetail.contains(DTLSContext.publicKeyPinString(serverPin)))
    }

    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"))
    func serverRefusesOpenSSLClientsExpiredCertificate() throws {
        let socket = try UDPSocket()
        let context = try Certs.server(clientTrust: "ca.pem", requireClient: true)
        let client = try OpenSSLProcess(arguments: [
            "s_client", "-dtls1_2", "-connect", "127.0.0.1:\(socket.localPort)", "-mtu", "1400",
            "-CAfile", Certs.path("ca.pem"), "-servername", "localhost",
            "-cert", Certs.path("expired-server.pem"), "-key", Certs.path("expired-server.key"),
        ])
        defer { client.stop() }
        let cookie: [UInt8] = Array("interop-cookie".utf8)
        var connection: DTLSConnection?
        var events: [DTLSEvent] = []
        let start = NIODeadline.now()
        while NIODeadline.now() < start + .seconds(10), events.isEmpty {
            if let connection {
                if let datagram = socket.receive() { connection.receiveDatagram(datagram, now: .now()) }
                if let deadline = connection.nextDeadline, deadline <= .now() { connection.handleTimeout(now: .now()) }
                while let datagram = connection.pollDatagram() { socket.send(datagram) }
                while let event = connection.pollEvent() { events.append(event) }
            } else if let datagram = socket.receiveAndConnect() {
                connection = admit(datagram, context: context, cookie: cookie, socket: socket, send: socket.send)
            }
        }
        guard case .failed(.untrustedCertificate(let detail))? = events.first else {
            Issue.record("events: \(events); openssl said: \(client.text)")
            return
        }
        #expect(detail.hasPrefix("certificate has expired"))
        #expect(detail.contains("valid until 2021-01-01"))
    }
}

/// The server's side of the cookie exchange for one datagram from `socket`: a HelloVerifyRequest
/// goes back at once; an accepted connection sends its first flight through `send`.
private func admit(_ datagram: ByteBuffer, context: DTLSContext, cookie: [UInt8], socket: UDPSocket,
                   send: (ByteBuffer) -> Void) -> DTLSConnection? {
    switch context.listen(datagram: datagram, cookieToIssue: cookie, acceptableCookies: [cookie], mtu: 1400, now: .now()) {
    case .helloVerifyRequest(let hvr):
        socket.send(hvr)
        return nil
    case .accepted(let accepted):
        while let datagram = accepted.pollDatagram() { send(datagram) }
        return accepted
    case .dropped:
        return nil
    }
}

/// Starts `client`'s handshake over `socket` and runs it until its first event (or 10 s).
private func handshake(_ client: DTLSConnection, over socket: UDPSocket) -> [DTLSEvent] {
    client.startHandshake(now: .now())
    var events: [DTLSEvent] = []
    let start = NIODeadline.now()
    while NIODeadline.now() < start + .seconds(10), events.isEmpty {
        while let datagram = client.pollDatagram() { socket.send(datagram) }
        if let datagram = socket.receive() { client.receiveDatagram(datagram, now: .now()) }
        if let deadline = client.nextDeadline, deadline <= .now() { client.handleTimeout(now: .now()) }
        while let event = client.pollEvent() { events.append(event) }
    }
    return events
}

/// Runs our client against `openssl s_server` presenting `certificate` until the handshake ends.
private func handshakeWithOpenSSLServer(certificate: String, client context: DTLSContext) throws -> [DTLSEvent] {
    let port = try UDPSocket().localPort  // a free port, released for the server to take
    let server = try OpenSSLProcess(port: port, certificate: certificate)
    defer { server.stop() }
    Thread.sleep(forTimeInterval: 0.3)
    let socket = try UDPSocket(connectTo: port)
    let client = try DTLSConnection(client: context, serverName: "localhost", mtu: 1400)
    let events = handshake(client, over: socket)
    // Send the final alert or close_notify so the server process is not left waiting.
    if events.first == .handshakeCompleted { client.sendCloseNotify() }
    while let datagram = client.pollDatagram() { socket.send(datagram) }
    return events
}

/// A stock DTLS peer holds us to one record sequence per epoch: it drops the second of two
/// records with the same `(epoch, sequence)`, and with ChaCha20-Poly1305 a repeat reuses a nonce.
@Suite(.serialized) struct DTLSOpenSSLSequenceTests {
    /// Our server loses its CCS+Finished once and talks at once; `openssl s_client` resends its
    /// flight, we resend the Finished. Everything we sent reaches it, each record under a new number.
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"),
          arguments: DTLSCipherSuite.allCases)
    func serverResendsItsFinishedToOpenSSLClientUnderAFreshSequence(suite: DTLSCipherSuite) throws {
        var lostFinished = false
        let run = try runServerAgainstOpenSSLClient(suite: suite, drop: { datagram in
            guard !lostFinished, RecordList(datagram).contains(where: { $0.epoch == 1 }) else { return false }
            lostFinished = true
            return true
        }, script: { step, connection, client in
            switch step {
            case .handshakeCompleted:
                try connection.writeApplicationData(ByteBuffer(string: "early from toudtls\n"))
            case .clientSaid("early from toudtls"):
                client.write("hello from openssl\n")
            case .weReceived("hello from openssl"):
                try connection.writeApplicationData(ByteBuffer(string: "late from toudtls\n"))
            case .clientSaid("late from toudtls"):
                return true
            default:
                break
            }
            return false
        })
        #expect(lostFinished)
        #expect(run.finished, "openssl said: \(run.clientOutput)")
        let finisheds = run.sent.filter { $0.epoch == 1 && $0.type == 22 }
        #expect(finisheds.count == 2)
        #expect(run.sent.repeatedSequenceNumbers.isEmpty, "we repeated \(run.sent.repeatedSequenceNumbers)")
    }

    /// `openssl s_client` tries to renegotiate (a ClientHello in epoch 1); our server's OpenSSL
    /// answers with a no_renegotiation alert, which must carry a number our data did not use, or the
    /// client drops it as a replay and never learns the answer.
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"),
          arguments: DTLSCipherSuite.allCases)
    func serverRefusesOpenSSLClientsRenegotiationUnderAFreshSequence(suite: DTLSCipherSuite) throws {
        let run = try runServerAgainstOpenSSLClient(suite: suite, drop: { _ in false }, script: { step, connection, client in
            switch step {
            case .handshakeCompleted:
                for index in 0..<3 { try connection.writeApplicationData(ByteBuffer(string: "data \(index) from toudtls\n")) }
            case .clientSaid("data 2 from toudtls"):
                client.write("R\n")
            case .clientSaid("no renegotiation"):
                return true
            default:
                break
            }
            return false
        })
        #expect(run.finished, "openssl said: \(run.clientOutput)")
        #expect(run.sent.contains { $0.epoch == 1 && $0.type == 21 })
        #expect(run.sent.repeatedSequenceNumbers.isEmpty, "we repeated \(run.sent.repeatedSequenceNumbers)")
    }

    /// `openssl s_server` asks our client to renegotiate (a HelloRequest in epoch 1); the client's
    /// no_renegotiation alert must reach it under a fresh number.
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"),
          arguments: DTLSCipherSuite.allCases)
    func clientRefusesOpenSSLServersRenegotiationUnderAFreshSequence(suite: DTLSCipherSuite) throws {
        let port = try UDPSocket().localPort  // a free port, released for the server to take
        let server = try OpenSSLProcess(port: port, cipher: suite.openSSLName(rsa: false))
        defer { server.stop() }
        Thread.sleep(forTimeInterval: 0.3)
        let socket = try UDPSocket(connectTo: port)
        let client = try DTLSConnection(client: Certs.client(cipherSuites: [suite]), serverName: "localhost", mtu: 1400)
        client.startHandshake(now: .now())
        var sent: [ByteBuffer] = []
        var wroteData = false
        var askedRenegotiation = false
        var events: [DTLSEvent] = []
        let start = NIODeadline.now()
        while NIODeadline.now() < start + .seconds(10), !server.text.contains("no renegotiation") {
            while let datagram = client.pollDatagram() {
                sent.append(datagram)
                socket.send(datagram)
            }
            if let datagram = socket.receive() { client.receiveDatagram(datagram, now: .now()) }
            if let deadline = client.nextDeadline, deadline <= .now() { client.handleTimeout(now: .now()) }
            while let event = client.pollEvent() { events.append(event) }
            if events.contains(.handshakeCompleted), !wroteData {
                for index in 0..<3 { try client.writeApplicationData(ByteBuffer(string: "data \(index) from toudtls\n")) }
                wroteData = true
            }
            if wroteData, !askedRenegotiation, server.text.contains("data 2 from toudtls") {
                server.write("r\n")
                askedRenegotiation = true
            }
        }
        #expect(askedRenegotiation, "openssl said: \(server.text)")
        #expect(server.text.contains("no renegotiation"), "openssl said: \(server.text)")
        let records = RecordList(sent)
        #expect(records.contains { $0.epoch == 1 && $0.type == 21 })
        #expect(records.repeatedSequenceNumbers.isEmpty, "we repeated \(records.repeatedSequenceNumbers)")
    }
}

/// Session tickets with a DTLS stack nobody here wrote, both ways.
@Suite(.serialized) struct DTLSOpenSSLResumptionTests {
    /// `openssl s_client -sess_out` then `-sess_in` against our server: the second is "Reused".
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"))
    func serverResumesOpenSSLClientsTicket() throws {
        let context = try Certs.server()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-sess-\(getpid()).pem").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        var resumed: [Bool] = []
        for arguments in [["-sess_out", file], ["-sess_in", file]] {
            let run = try runServerAgainstOpenSSLClient(suite: .aes256GCM, context: context, clientArguments: arguments,
                                                        drop: { _ in false }, script: { step, connection, _ in
                if step == .handshakeCompleted {
                    resumed.append(connection.isResumed)
                    try connection.writeApplicationData(ByteBuffer(string: "resumed from toudtls\n"))
                }
                return step == .clientSaid("resumed from toudtls")
            })
            #expect(run.finished, "openssl said: \(run.clientOutput.suffix(600))")
            if arguments[0] == "-sess_in" {
                #expect(run.clientOutput.contains("Reused, TLSv1.2"), "openssl said: \(run.clientOutput.suffix(600))")
            }
        }
        #expect(resumed == [false, true])
    }

    /// Our client takes `openssl s_server`'s ticket and resumes with it on a second connection.
    @Test(.enabled(if: opensslPath != nil, "the openssl command is not installed; skipping interop"))
    func clientResumesWithOpenSSLServersTicket() throws {
        let port = try UDPSocket().localPort  // a free port, released for the server to take
        let server = try OpenSSLProcess(port: port)
        defer { server.stop() }
        Thread.sleep(forTimeInterval: 0.3)
        let context = try Certs.client()
        var saved: DTLSSavedSession?
        var resumed: [Bool] = []
        for _ in 0..<2 {
            let socket = try UDPSocket(connectTo: port)
            let client = try DTLSConnection(client: context, serverName: "localhost", mtu: 1400, resuming: saved)
            #expect(client.resumptionRefusal == nil)
            let events = handshake(client, over: socket)
            #expect(events == [.handshakeCompleted], "openssl said: \(server.text.suffix(600))")
            resumed.append(client.isResumed)
            saved = client.resumableSession ?? saved
            // s_server serves one connection at a time: end this one cleanly.
            client.sendCloseNotify()
            while let datagram = client.pollDatagram() { socket.send(datagram) }
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(resumed == [false, true], "openssl said: \(server.text.suffix(600))")
    }
}

private enum InteropStep: Equatable {
    case handshakeCompleted
    /// A line the openssl client printed (the peer received it from us, or reported it).
    case clientSaid(String)
    /// A line we received from the openssl client.
    case weReceived(String)
}

private struct InteropRun {
    var finished = false
    var sent = RecordList([])
    var clientOutput = ""
}

/// Our server (stateless cookie exchange, then a connection) against `openssl s_client`. `drop`
/// may lose our datagrams; `script` reacts to each step once and returns true when done.
private func runServerAgainstOpenSSLClient(
    suite: DTLSCipherSuite, context: DTLSContext? = nil, clientArguments: [String] = [],
    drop: (ByteBuffer) -> Bool,
    script: (InteropStep, DTLSConnection, OpenSSLProcess) throws -> Bool
) throws -> InteropRun {
    let socket = try UDPSocket()
    let context = try context ?? Certs.server()
    let client = try OpenSSLProcess(arguments: [
        "s_client", "-dtls1_2", "-connect", "127.0.0.1:\(socket.localPort)", "-mtu", "1400",
        "-CAfile", Certs.path("ca.pem"), "-servername", "localhost", "-cipher", suite.openSSLName(rsa: false),
    ] + clientArguments)
    defer { client.stop() }
    let cookie: [UInt8] = Array("interop-cookie".utf8)
    var connection: DTLSConnection?
    var run = InteropRun()
    var sent: [ByteBuffer] = []
    var received = ""
    var done: [InteropStep] = []
    func send(_ datagram: ByteBuffer) {
        sent.append(datagram)
        if !drop(datagram) { socket.send(datagram) }
    }
    func step(_ candidate: InteropStep, _ connection: DTLSConnection) throws {
        guard !done.contains(candidate) else { return }
        done.append(candidate)
        if try script(candidate, connection, client) { run.finished = true }
    }
    let start = NIODeadline.now()
    while NIODeadline.now() < start + .seconds(15), !run.finished {
        if let connection {
            if let datagram = socket.receive() { connection.receiveDatagram(datagram, now: .now()) }
            if let deadline = connection.nextDeadline, deadline <= .now() { connection.handleTimeout(now: .now()) }
            while let datagram = connection.pollDatagram() { send(datagram) }
            while let event = connection.pollEvent() {
                if event == .handshakeCompleted { try step(.handshakeCompleted, connection) }
            }
            while var data = connection.readApplicationData() { received += data.readString(length: data.readableBytes) ?? "" }
            for line in received.split(separator: "\n") { try step(.weReceived(String(line)), connection) }
            for line in client.text.split(separator: "\n") {
                for marker in ["early from toudtls", "late from toudtls", "data 2 from toudtls", "no renegotiation",
                               "resumed from toudtls"]
                where line.contains(marker) {
                    try step(.clientSaid(marker), connection)
                }
            }
            while let datagram = connection.pollDatagram() { send(datagram) }
        } else if let datagram = socket.receiveAndConnect() {
            connection = admit(datagram, context: context, cookie: cookie, socket: socket, send: send)
        }
    }
    run.sent = RecordList(sent)
    run.clientOutput = client.text
    return run
}
