import Foundation
import Testing

/// toudtls-cat seen from the network: every datagram of a real transfer, captured with tcpdump on
/// lo, checked against wire-format.md by a parser that shares no code with the library.
@Suite("wire capture of toudtls-cat", .serialized,
       .enabled(if: TcpdumpCapture.unavailableReason == nil,
                Comment(rawValue: "skipped: \(TcpdumpCapture.unavailableReason ?? "")")))
struct CaptureTests {
    let certs = CLIProcess.certs

    struct Capture {
        var audit: WireAudit
        var datagrams: [CapturedDatagram]
        var file: [UInt8]
    }

    /// Runs one client -> listener transfer of `bytes` random bytes while tcpdump records the
    /// listener's port, checks both exits and the delivered bytes, and audits every datagram.
    func capturedTransfer(mode: WireAudit.Mode, host: String, bytes: Int, offload: Bool = true) throws -> Capture {
        // A capture that lost packets cannot vouch for every datagram; on a busy machine try again.
        for attempt in 1...3 {
            let (capture, complete) = try capturedTransferAttempt(mode: mode, host: host, bytes: bytes,
                                                                  offload: offload, lastAttempt: attempt == 3)
            if complete { return capture }
            print("tcpdump dropped packets (attempt \(attempt) of 3); capturing the transfer again")
        }
        throw TcpdumpCapture.Failure.notStarted("unreachable: the last attempt always returns")
    }

    func capturedTransferAttempt(mode: WireAudit.Mode, host: String, bytes: Int, offload: Bool,
                                 lastAttempt: Bool) throws -> (Capture, complete: Bool) {
        let input = try makeRandomFile(bytes: bytes)
        defer { try? FileManager.default.removeItem(at: input) }
        let secure = mode == .secure
        let offloadOptions = offload ? [] : ["--no-offload"]
        let serverOptions = (secure ? ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"] : ["--plain"])
            + offloadOptions
        let clientOptions = (secure ? ["--ca", "\(certs)/ca.pem", "--server-name", "localhost"] : ["--plain"])
            + offloadOptions

        let server = try startCat(["-l", "-v"] + serverOptions + [host, "0"])
        defer { finish(server, timeout: 0) }
        try #require(server.waitForError(containing: "listening on"), "listener never ready: \(server.errorOutput)")
        let port = try #require(listenerPort(of: server), "no port in: \(server.errorOutput)")

        // Capturing before the first datagram: the init returns once tcpdump says "listening on".
        let capture = try TcpdumpCapture(port: Int(port))
        defer { capture.discard() }
        let client = try startCat(clientOptions + [host, "\(port)"], stdin: input)
        defer { finish(client, timeout: 0) }
        let clientStatus = finish(client, timeout: 60)
        let serverStatus = finish(server, timeout: 20)
        // The last datagrams are on lo by now; give tcpdump a moment to write them.
        Thread.sleep(forTimeInterval: 0.3)
        capture.stop()

        #expect(clientStatus == 0, "client: \(client.errorOutput)")
        #expect(serverStatus == 0, "server: \(server.errorOutput)")
        let expected = [UInt8](try Data(contentsOf: input))
        #expect(server.output.count == expected.count)
        // Compared outside #expect: on a mismatch it would diff megabytes and never finish.
        let intact = server.output == Data(expected)
        #expect(intact, "the transfer arrived intact")
        let complete = capture.packetsDroppedByKernel == 0
        if !complete && !lastAttempt {
            return (Capture(audit: WireAudit(mode: mode, listenerPort: port), datagrams: [], file: []), false)
        }
        #expect(complete, "tcpdump missed packets: \(capture.errorOutput)")

        let pcap = try PcapFile(contentsOf: capture.file)
        let packets = try pcap.udpDatagrams()
        // With GSO, lo's tap sees runs whole; without it, every packet must already fit the MTU.
        let datagrams = offload ? packets.flatMap { $0.segmentationRun(secure: secure) } : packets
        if !offload {
            #expect(packets.allSatisfy { $0.ipPacketLength <= 1500 }, "--no-offload: one datagram per packet")
        }
        var audit = WireAudit(mode: mode, listenerPort: port)
        for datagram in datagrams { audit.check(datagram) }
        print("captured \(packets.count) packets, \(datagrams.count) datagrams on \(host) (link type \(pcap.linkType)): S on \(audit.datagramsWithS), "
              + "records by type \(audit.recordTypeCounts.sorted { $0.key < $1.key }), largest IP packet "
              + "\(audit.largestIPPacket) bytes, \(audit.violationCount) violations")
        #expect(!datagrams.isEmpty, "nothing captured: \(capture.errorOutput)")
        let report = audit.violations.joined(separator: "\n")
        #expect(audit.violations.isEmpty,
                "\(audit.violationCount) of \(datagrams.count) datagrams break the wire format:\n\(report)")
        #expect(audit.largestIPPacket <= 1500, "largest IP packet \(audit.largestIPPacket)")
        #expect(audit.clientEndpoints.count == 1, "one connection, one client socket: \(audit.clientEndpoints)")
        #expect(datagrams.allSatisfy { $0.isIPv6 == host.contains(":") })
        // The capture began before the session did: the very first datagram opens it.
        if let first = datagrams.first {
            #expect(first.destinationPort == port, "the first datagram comes from the client")
            let gue = GUEView.parse(first.payload).view
            #expect(gue?.hasS == true && gue?.hasD == false, "the first datagram opens a session (S, no D)")
        }
        return (Capture(audit: audit, datagrams: datagrams, file: expected), true)
    }

    func checkSecure(_ capture: Capture) {
        let audit = capture.audit
        let counts = audit.recordTypeCounts
        #expect(counts[22, default: 0] >= 6, "a whole handshake: \(counts)")
        #expect(counts[20, default: 0] >= 2, "a ChangeCipherSpec from each side: \(counts)")
        #expect(counts[23, default: 0] > capture.file.count / 1500, "data travelled as application data: \(counts)")
        #expect(audit.applicationDataBytes > capture.file.count, "every file byte inside a record")
        #expect(audit.datagramsWithS >= 4 && audit.datagramsWithS < 40, "S only on the handshake")

        // wire-format.md, Closing: the passive closer sends close_notify once its FIN is acknowledged,
        // the active closer answers with its own; so each side ends with exactly one alert.
        #expect(audit.alertsFromClient == 1 && audit.lastRecordTypeFromClient == 21,
                "client alerts \(audit.alertsFromClient), last record type \(audit.lastRecordTypeFromClient ?? 0)")
        #expect(audit.alertsFromListener == 1 && audit.lastRecordTypeFromListener == 21,
                "listener alerts \(audit.alertsFromListener), last type \(audit.lastRecordTypeFromListener ?? 0)")

        // No stretch of the file, nor of anything else in clear, shows on the wire.
        let detector = CleartextDetector(file: capture.file)
        var leaks: [String] = []
        for datagram in capture.datagrams {
            let found = detector.windows(in: datagram.payload[...])
            if let offset = found.first { leaks.append("packet \(datagram.index): file bytes at \(offset)") }
        }
        #expect(leaks.isEmpty, "cleartext on the wire: \(leaks.prefix(5))")
    }

    @Test("secure, IPv4: every datagram is GUE + whole DTLS 1.2 records, S only on the handshake, no cleartext")
    func secureIPv4() throws {
        checkSecure(try capturedTransfer(mode: .secure, host: "127.0.0.1", bytes: 2 << 20))
    }

    @Test("secure without GSO/GRO (--no-offload): every captured packet is one datagram within the path MTU")
    func secureWithoutOffload() throws {
        checkSecure(try capturedTransfer(mode: .secure, host: "127.0.0.1", bytes: 1 << 20, offload: false))
    }

    @Test("secure, IPv6: the same on ::1, and full segments still fit 1500 bytes with the larger IP header")
    func secureIPv6() throws {
        checkSecure(try capturedTransfer(mode: .secure, host: "::1", bytes: 512 << 10))
    }

    @Test("--plain: proto 6, T clear, address-free TCP checksum valid, S exactly on SYN, the stream readable")
    func plain() throws {
        let capture = try capturedTransfer(mode: .plain, host: "127.0.0.1", bytes: 2 << 20)
        let audit = capture.audit
        #expect(audit.synSegments >= 2, "a SYN and a SYN-ACK")
        #expect(audit.datagramsWithS == audit.synSegments)
        // Plain mode hides nothing: the captured segments rebuild the file exactly, which also
        // proves the cleartext detector of the secure tests would have seen a leak.
        let stream = audit.reassembledClientStream()
        #expect(stream.count == capture.file.count)
        let rebuilt = stream == capture.file
        #expect(rebuilt, "captured TCP payload rebuilds the file")
        let detector = CleartextDetector(file: Array(capture.file.prefix(256 << 10)))
        let seen = capture.datagrams.reduce(0) { $0 + detector.windows(in: $1.payload[...]).count }
        // Windows that straddle two segments cannot be seen; all the others must be.
        let indexed = ((256 << 10) - CleartextDetector.window) / CleartextDetector.stride + 1
        #expect(seen >= indexed * 9 / 10, "the detector sees plain file bytes: \(seen) of \(indexed) windows")
    }
}
