import DTLS
import Foundation
import NIOCore

/// The committed test certificates in certs/.
enum Certs {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("certs")

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: directory.appendingPathComponent(name)))
    }

    static func server(cert: String = "server", clientTrust: String? = nil,
                       requireClient: Bool = false) throws -> DTLSContext {
        try DTLSContext.server(certificateChainPEM: bytes("\(cert).pem"), privateKeyPEM: bytes("\(cert).key"),
                               clientTrustRootsPEM: clientTrust.map { try bytes($0) },
                               requireClientCertificate: requireClient)
    }

    static func client(trust: String = "ca.pem", withCertificate: Bool = false,
                       cipherSuites: [DTLSCipherSuite] = DTLSCipherSuite.allCases) throws -> DTLSContext {
        try DTLSContext.client(trustRootsPEM: bytes(trust),
                               certificateChainPEM: withCertificate ? bytes("client.pem") : nil,
                               privateKeyPEM: withCertificate ? bytes("client.key") : nil,
                               cipherSuites: cipherSuites)
    }
}

/// A client and a server joined by an in-memory link, with the server side doing the stateless
/// cookie exchange through `DTLSContext.listen`.
final class Pair {
    let client: DTLSConnection
    let serverContext: DTLSContext
    var server: DTLSConnection?
    let mtu: Int
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let cookie: [UInt8] = Array("cookie-for-tests-0123456789".utf8)
    /// false: the server takes a ClientHello without a cookie exchange.
    var requireCookie = true

    var clientEvents: [DTLSEvent] = []
    var serverEvents: [DTLSEvent] = []
    /// Every datagram that crossed the link, for size checks.
    var clientSent: [ByteBuffer] = []
    var serverSent: [ByteBuffer] = []
    var helloVerifyRequests = 0
    var listenDrops: [String] = []
    /// Returns false to drop a server datagram on the link.
    var deliverToClient: (ByteBuffer) -> Bool = { _ in true }
    /// Returns false to drop a client datagram on the link (once the server connection exists).
    var deliverToServer: (ByteBuffer) -> Bool = { _ in true }

    convenience init(client clientContext: DTLSContext, server serverContext: DTLSContext,
                     serverName: String = "localhost", mtu: Int = 1400) throws {
        try self.init(client: DTLSConnection(client: clientContext, serverName: serverName, mtu: mtu),
                      serverContext: serverContext, mtu: mtu)
    }

    /// A client connection made by the test (e.g. one resuming a session).
    init(client: DTLSConnection, serverContext: DTLSContext, mtu: Int = 1400) throws {
        self.client = client
        self.serverContext = serverContext
        self.mtu = mtu
    }

    func collectEvents() {
        while let event = client.pollEvent() { clientEvents.append(event) }
        while let event = server?.pollEvent() { serverEvents.append(event) }
    }

    /// Moves datagrams both ways until the link is quiet.
    func shuttle() {
        var moved = true
        var rounds = 0
        while moved, rounds < 100 {
            moved = false
            rounds += 1
            while let datagram = client.pollDatagram() {
                moved = true
                clientSent.append(datagram)
                if let server {
                    if deliverToServer(datagram) { server.receiveDatagram(datagram, now: now) }
                } else {
                    switch serverContext.listen(datagram: datagram, cookieToIssue: cookie,
                                                acceptableCookies: [cookie], requireCookie: requireCookie,
                                                mtu: mtu, now: now) {
                    case .helloVerifyRequest(let hvr):
                        helloVerifyRequests += 1
                        client.receiveDatagram(hvr, now: now)
                    case .accepted(let connection):
                        server = connection
                    case .dropped(let reason):
                        listenDrops.append(reason)
                    }
                }
            }
            while let datagram = server?.pollDatagram() {
                moved = true
                serverSent.append(datagram)
                if deliverToClient(datagram) { client.receiveDatagram(datagram, now: now) }
            }
            collectEvents()
        }
    }

    func handshake() {
        client.startHandshake(now: now)
        shuttle()
    }
}

extension ByteBuffer {
    static func pattern(_ count: Int, seed: UInt8 = 0) -> ByteBuffer {
        var buffer = ByteBuffer()
        for i in 0..<count { buffer.writeInteger(UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed))) }
        return buffer
    }
}
