import CDatagramIO
import DatagramIO
import NIOConcurrencyHelpers
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Records what a socket delivers; `waitFor` returns once enough has arrived (or the time is up).
final class Recorder: UDPSocketDelegate, @unchecked Sendable {
    struct Datagram {
        var bytes: [UInt8]
        var segmentSize: Int
        var peer: SocketAddress
    }
    private let state = NIOLockedValueBox((datagrams: [Datagram](), batches: 0, errors: [CInt](), closed: false))
    /// Called with each datagram on the loop, after it is recorded (to close under load, say).
    var onReceive: ((Int) -> Void)?

    func received(_ datagram: ByteBuffer, segmentSize: Int, from peer: SocketAddress) {
        let count = state.withLockedValue { state -> Int in
            state.datagrams.append(Datagram(bytes: Array(datagram.readableBytesView), segmentSize: segmentSize, peer: peer))
            return state.datagrams.count
        }
        onReceive?(count)
    }
    func readBatchEnded() { state.withLockedValue { $0.batches += 1 } }
    func socketError(_ error: IOError) { state.withLockedValue { $0.errors.append(error.errnoCode) } }
    func socketClosed() { state.withLockedValue { $0.closed = true } }

    var datagrams: [Datagram] { state.withLockedValue { $0.datagrams } }
    var batches: Int { state.withLockedValue { $0.batches } }
    var errors: [CInt] { state.withLockedValue { $0.errors } }
    var closed: Bool { state.withLockedValue { $0.closed } }

    /// The datagrams, split where the kernel coalesced them (GRO), once `count` have arrived.
    func waitFor(_ count: Int, seconds: Double = 5) async throws -> [[UInt8]] {
        let deadline = NIODeadline.now() + .milliseconds(Int64(seconds * 1000))
        while NIODeadline.now() < deadline {
            let split = Self.split(datagrams)
            if split.count >= count { return split }
            try await Task.sleep(for: .milliseconds(2))
        }
        return Self.split(datagrams)
    }

    static func split(_ datagrams: [Datagram]) -> [[UInt8]] {
        datagrams.flatMap { datagram -> [[UInt8]] in
            guard datagram.segmentSize > 0 else { return [datagram.bytes] }
            return stride(from: 0, to: datagram.bytes.count, by: datagram.segmentSize).map {
                Array(datagram.bytes[$0..<min($0 + datagram.segmentSize, datagram.bytes.count)])
            }
        }
    }
}

/// Bytes that say which datagram they are: index and length, then a pattern.
func payload(_ index: Int, length: Int) -> [UInt8] {
    (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index &* 7) }
}

func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// Runs `body` on `loop` and returns its value.
func on<T: Sendable>(_ loop: IOLoop, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await loop.submit(body).get()
}

/// A bound receiver and a sender on loopback, each started on its own loop.
struct SocketPair {
    let receiver: UDPSocket
    let sender: UDPSocket
    let received: Recorder
    let senderEvents: Recorder

    static func make(host: String = "127.0.0.1", receiverOptions: UDPSocket.Options = .init(),
                     senderOptions: UDPSocket.Options = .init(), loops: (IOLoop, IOLoop)) async throws -> SocketPair {
        let receiver = try UDPSocket.bind(to: SocketAddress(ipAddress: host, port: 0), on: loops.0, options: receiverOptions)
        let sender = try UDPSocket.bind(to: SocketAddress(ipAddress: host, port: 0), on: loops.1, options: senderOptions)
        let received = Recorder()
        let senderEvents = Recorder()
        try await on(loops.0) { try receiver.start(delegate: received) }
        try await on(loops.1) { try sender.start(delegate: senderEvents) }
        return SocketPair(receiver: receiver, sender: sender, received: received, senderEvents: senderEvents)
    }

    func close() async throws {
        try await on(receiver.loop) { receiver.close() }
        try await on(sender.loop) { sender.close() }
        try await receiver.closeFuture.get()
        try await sender.closeFuture.get()
    }
}

@Suite("DatagramIO: UDP sockets over loopback")
struct UDPSocketTests {
    static let loops = (try! IOLoop(name: "test-rx"), try! IOLoop(name: "test-tx"))

    @Test("100 datagrams of mixed sizes leave in a few sendmmsg calls and arrive intact, with the sender's address",
          arguments: ["127.0.0.1", "::1"])
    func batchedSendReceive(host: String) async throws {
        let pair = try await SocketPair.make(host: host, loops: Self.loops)
        let sent = (0..<100).map { payload($0, length: 1 + ($0 * 37) % 1400) }
        let destination = try #require(pair.receiver.localAddress)
        try await on(pair.sender.loop) {
            for bytes in sent { pair.sender.enqueue(buffer(bytes), to: destination) }
            pair.sender.flush()
        }
        let got = try await pair.received.waitFor(100)
        #expect(got == sent)
        let senderAddress = try #require(pair.sender.localAddress)
        #expect(pair.received.datagrams.allSatisfy { $0.peer == senderAddress })
        let counters = try await on(pair.sender.loop) { pair.sender.counters }
        #expect(counters.messagesSent == 100)
        // 64 messages per call at most: two calls.
        #expect(counters.sendCalls == 2)
        let receiverCounters = try await on(pair.receiver.loop) { pair.receiver.counters }
        #expect(receiverCounters.datagramsReceived == 100)
        #expect(receiverCounters.receiveCalls < 100)
        try await pair.close()
    }

    @Test("a run leaves as one GSO send and arrives as its datagrams (GRO off at the receiver)")
    func segmentedSend() async throws {
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveOffload = false
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, loops: Self.loops)
        try #require(pair.sender.segmentationOffload, "this kernel has no UDP GSO")
        let sent = (0..<20).map { payload($0, length: $0 == 19 ? 500 : 1200) }
        let destination = try #require(pair.receiver.localAddress)
        try await on(pair.sender.loop) {
            pair.sender.enqueue(buffer(sent.flatMap { $0 }), segmentSize: 1200, to: destination)
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(20) == sent)
        #expect(pair.received.datagrams.count == 20)
        let counters = try await on(pair.sender.loop) { pair.sender.counters }
        #expect(counters.segmentedSends == 1)
        #expect(counters.messagesSent == 1)
        try await pair.close()
    }

    @Test("with GRO the receiver gets a run as one coalesced read, split by its segment size")
    func coalescedReceive() async throws {
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveSlot = 65_536
        receiverOptions.receiveBatch = 4
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, loops: Self.loops)
        try #require(pair.receiver.receiveOffload, "this kernel refuses UDP_GRO")
        let sent = (0..<30).map { payload($0, length: 1300) }
        let destination = try #require(pair.receiver.localAddress)
        try await on(pair.sender.loop) {
            pair.sender.enqueue(buffer(sent.flatMap { $0 }), segmentSize: 1300, to: destination)
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(30) == sent)
        #expect(pair.received.datagrams.count < 30)
        #expect(pair.received.datagrams.contains { $0.segmentSize == 1300 })
        try await pair.close()
    }

    @Test("where the kernel refuses segmentation (SO_NO_CHECK: EINVAL), runs go one by one from then on and arrive")
    func segmentationRefused() async throws {
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveOffload = false
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, loops: Self.loops)
        try #require(pair.sender.segmentationOffload, "this kernel has no UDP GSO")
        // UDP without checksums cannot be segmented: the kernel fails the GSO send with EINVAL.
        #expect(pair.sender.setOption(level: SOL_SOCKET, name: 11 /* SO_NO_CHECK */, value: 1) == 0)
        let first = (0..<10).map { payload($0, length: 1000) }
        let second = (10..<20).map { payload($0, length: 1000) }
        let destination = try #require(pair.receiver.localAddress)
        try await on(pair.sender.loop) {
            pair.sender.enqueue(buffer(first.flatMap { $0 }), segmentSize: 1000, to: destination)
            pair.sender.flush()
            pair.sender.enqueue(buffer(second.flatMap { $0 }), segmentSize: 1000, to: destination)
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(20) == first + second)
        let counters = try await on(pair.sender.loop) { pair.sender.counters }
        #expect(counters.segmentationRefusals == 1)
        #expect(counters.segmentedSends == 0)
        #expect(counters.messagesSent == 20)
        #expect(!pair.sender.segmentationOffload)
        #expect(pair.senderEvents.errors.isEmpty)
        try await pair.close()
    }

    @Test("with segmentation off a run is sent as separate datagrams")
    func segmentationOff() async throws {
        var senderOptions = UDPSocket.Options()
        senderOptions.segmentationOffload = false
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveOffload = false
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, senderOptions: senderOptions,
                                             loops: Self.loops)
        let sent = (0..<8).map { payload($0, length: 900) }
        let destination = try #require(pair.receiver.localAddress)
        try await on(pair.sender.loop) {
            pair.sender.enqueue(buffer(sent.flatMap { $0 }), segmentSize: 900, to: destination)
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(8) == sent)
        let counters = try await on(pair.sender.loop) { pair.sender.counters }
        #expect(counters.segmentedSends == 0 && counters.messagesSent == 8 && counters.sendCalls == 1)
        try await pair.close()
    }

    @Test("a datagram longer than a receive slot is dropped and counted; the ones around it arrive")
    func truncatedDropped() async throws {
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveSlot = 512
        receiverOptions.receiveOffload = false
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, loops: Self.loops)
        let destination = try #require(pair.receiver.localAddress)
        let small = payload(1, length: 100), large = payload(2, length: 600), last = payload(3, length: 512)
        try await on(pair.sender.loop) {
            for bytes in [small, large, last] { pair.sender.enqueue(buffer(bytes), to: destination) }
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(2) == [small, last])
        try await Task.sleep(for: .milliseconds(50))
        #expect(pair.received.datagrams.count == 2)
        let counters = try await on(pair.receiver.loop) { pair.receiver.counters }
        #expect(counters.truncated == 1)
        try await pair.close()
    }

    @Test("what waits to be sent is bounded: datagrams beyond maximumQueuedBytes are dropped and counted, the rest leave")
    func queueBounded() async throws {
        let pair = try await SocketPair.make(loops: Self.loops)
        let destination = try #require(pair.receiver.localAddress)
        let size = 1000
        let fits = UDPSocket.maximumQueuedBytes / size
        let (queued, counters) = try await on(pair.sender.loop) { () -> (Int, UDPSocketCounters) in
            // Queued without a flush, as while the send buffer is full.
            for index in 0..<(fits + 10) { pair.sender.enqueue(buffer(payload(index, length: size)), to: destination) }
            let queued = pair.sender.pendingCount
            pair.sender.flush()
            return (queued, pair.sender.counters)
        }
        #expect(queued == fits)
        #expect(counters.queueDrops == 10)
        #expect(counters.messagesSent == fits)
        #expect(try await on(pair.sender.loop) { pair.sender.pendingCount } == 0)
        try await pair.close()
    }

    @Test("a datagram too large for UDP is refused (EMSGSIZE), counted, and the socket goes on")
    func oversizedSend() async throws {
        let pair = try await SocketPair.make(loops: Self.loops)
        let destination = try #require(pair.receiver.localAddress)
        let after = payload(9, length: 200)
        try await on(pair.sender.loop) {
            pair.sender.enqueue(buffer(payload(8, length: 70_000)), to: destination)
            pair.sender.enqueue(buffer(after), to: destination)
            pair.sender.flush()
        }
        #expect(try await pair.received.waitFor(1) == [after])
        let counters = try await on(pair.sender.loop) { pair.sender.counters }
        #expect(counters.sendErrors == 1)
        #expect(pair.senderEvents.errors == [EMSGSIZE])
        try await pair.close()
    }

    @Test("closing a socket from its own delivery callback, under a flood: no more deliveries, closed reported")
    func closeUnderLoad() async throws {
        var receiverOptions = UDPSocket.Options()
        receiverOptions.receiveOffload = false
        let pair = try await SocketPair.make(receiverOptions: receiverOptions, loops: Self.loops)
        let destination = try #require(pair.receiver.localAddress)
        let receiver = pair.receiver
        pair.received.onReceive = { count in if count == 500 { receiver.close() } }
        let flood = Task {
            for round in 0..<200 {
                try await on(pair.sender.loop) {
                    for index in 0..<64 { pair.sender.enqueue(buffer(payload(round * 64 + index, length: 300)), to: destination) }
                    pair.sender.flush()
                }
            }
        }
        try await receiver.closeFuture.get()
        try await flood.value
        try await Task.sleep(for: .milliseconds(20))
        #expect(pair.received.datagrams.count == 500)
        #expect(pair.received.closed)
        #expect(!receiver.isOpen)
        try await on(pair.sender.loop) { pair.sender.close() }
        try await pair.sender.closeFuture.get()
    }

    @Test("a connected socket hears ICMP port unreachable as ECONNREFUSED, and closes on the send that meets it")
    func portUnreachable() async throws {
        // A port nobody listens on: bind, note, close.
        let probe = try UDPSocket.bind(to: SocketAddress(ipAddress: "127.0.0.1", port: 0), on: Self.loops.0)
        let closedPort = try #require(probe.localAddress)
        try await on(Self.loops.0) { probe.close() }
        let client = try UDPSocket.connect(to: closedPort, on: Self.loops.1)
        let events = Recorder()
        try await on(Self.loops.1) {
            try client.start(delegate: events)
            client.enqueue(buffer([1, 2, 3]), to: nil)
            client.flush()
        }
        // The ICMP error arrives on the socket's error queue: epoll reports it, recvmmsg returns it.
        let deadline = NIODeadline.now() + .seconds(2)
        while events.errors.isEmpty, NIODeadline.now() < deadline { try await Task.sleep(for: .milliseconds(2)) }
        #expect(events.errors.first == ECONNREFUSED)
        #expect(client.isOpen)
        // A refusal met by a send (the loop busy meanwhile, so the error is still pending then)
        // closes the socket, as SwiftNIO's does.
        try await on(Self.loops.1) { Self.sendTwiceAcrossTheICMPError(client) }
        try await client.closeFuture.get()
        #expect(events.closed)
    }

    /// Two one-byte sends 50 ms apart in one loop turn, to a closed port: the first draws the ICMP
    /// error, and the second meets it while nothing has read it.
    static func sendTwiceAcrossTheICMPError(_ client: UDPSocket) {
        client.enqueue(buffer([1]), to: nil)
        client.flush()
        usleep(50_000)
        client.enqueue(buffer([2]), to: nil)
        client.flush()
    }

    @Test("a send that meets the refusal first delivers what the peer sent before it closed, then reports ECONNREFUSED and closes")
    func refusalAfterQueuedDatagrams() async throws {
        // The peer is a plain socket, driven from the client's loop, so that the client cannot
        // read what it sends before the refusal.
        let peer = socket(AF_INET, CInt(SOCK_DGRAM.rawValue), 0)
        try #require(peer >= 0)
        let any = try SocketAddress(ipAddress: "127.0.0.1", port: 0)
        guard any.withSockAddr({ Glibc.bind(peer, $0, socklen_t($1)) }) == 0 else {
            Glibc.close(peer)
            Issue.record("bind: \(errno)")
            return
        }
        var storage = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(peer, $0, &length) } }
        let peerAddress = SocketAddress(storage, host: "127.0.0.1")
        let client = try UDPSocket.connect(to: peerAddress, on: Self.loops.1)
        let clientAddress = try #require(client.localAddress)
        let events = Recorder()
        try await on(Self.loops.1) {
            try client.start(delegate: events)
            // The peer's last words (a TCP RST, say), then its port closes; the client's first
            // send draws the ICMP error and the second meets it, all in one loop turn.
            let sent = clientAddress.withSockAddr { sendto(peer, [9, 9, 9] as [UInt8], 3, 0, $0, socklen_t($1)) }
            #expect(sent == 3)
            Glibc.close(peer)
            Self.sendTwiceAcrossTheICMPError(client)
        }
        try await client.closeFuture.get()
        #expect(events.datagrams.map(\.bytes) == [[9, 9, 9]])
        #expect(events.errors == [ECONNREFUSED])
        #expect(events.closed)
    }

    @Test("many peers: each datagram carries its own sender's address (the address cache tells them apart)")
    func manyPeers() async throws {
        let receiver = try UDPSocket.bind(to: SocketAddress(ipAddress: "127.0.0.1", port: 0), on: Self.loops.0)
        let recorder = Recorder()
        try await on(Self.loops.0) { try receiver.start(delegate: recorder) }
        let destination = try #require(receiver.localAddress)
        var senders: [UDPSocket] = []
        for _ in 0..<300 {
            senders.append(try UDPSocket.bind(to: SocketAddress(ipAddress: "127.0.0.1", port: 0), on: Self.loops.1))
        }
        let all = senders
        try await on(Self.loops.1) {
            for round in 0..<2 {
                for (index, sender) in all.enumerated() {
                    // The sender's index, in its first two bytes.
                    sender.enqueue(buffer([UInt8(index >> 8), UInt8(index & 0xFF), UInt8(round)]), to: destination)
                    sender.flush()
                }
            }
        }
        _ = try await recorder.waitFor(600)
        let got = recorder.datagrams
        #expect(got.count == 600)
        for datagram in got {
            let index = Int(datagram.bytes[0]) << 8 | Int(datagram.bytes[1])
            #expect(datagram.peer == all[index].localAddress)
        }
        try await on(Self.loops.0) { receiver.close() }
    }
}
