import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small deterministic generator so an impaired run can be repeated from its seed (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// True with the given probability in percent.
    mutating func chance(_ percent: Double) -> Bool {
        percent > 0 && Double.random(in: 0..<100, using: &self) < percent
    }
}

/// How one direction of the relay mistreats datagrams.
struct RelayImpairment: Sendable {
    var lossPercent: Double = 0
    var duplicatePercent: Double = 0
    /// Datagrams held back by `reorderExtraDelay` so later ones overtake them.
    var reorderPercent: Double = 0
    var reorderExtraDelay: TimeInterval = 0.004
    /// Every datagram waits `delay` plus up to `jitter` (uniform).
    var delay: TimeInterval = 0
    var jitter: TimeInterval = 0
    /// Datagrams waiting beyond this are dropped, like a router's full queue.
    var queueLimit = 1024

    static let none = RelayImpairment()
}

/// What the relay did to one direction, for the test to check and print.
struct RelayDirectionStats: Sendable, CustomStringConvertible {
    var received = 0
    var forwarded = 0
    var lost = 0
    var duplicated = 0
    var reordered = 0
    var overflowed = 0
    var sendErrors = 0
    var description: String {
        "received \(received), forwarded \(forwarded), lost \(lost), duplicated \(duplicated), "
            + "reordered \(reordered), queue-full \(overflowed), send errors \(sendErrors)"
    }
}

enum UDPRelayError: Error, CustomStringConvertible {
    case system(String, Int32)
    var description: String {
        switch self { case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code)))" }
    }
}

/// An impairing UDP relay on 127.0.0.1: a client sends to `port`, the relay forwards to the target
/// from its own ephemeral socket (so the target sees another address than the client's) and sends
/// the answers back to the last client address seen. One background thread, poll(2), no NIO.
final class UDPRelay: @unchecked Sendable {
    private struct Pending {
        var due: UInt64
        var order: UInt64
        var bytes: [UInt8]
    }

    private struct Direction {
        var impairment: RelayImpairment
        var queue: [Pending] = []
        var stats = RelayDirectionStats()
    }

    /// The port the client should send to.
    let port: UInt16
    /// The relay's own port toward the target (what the target sees as the source); changes on `rebind()`.
    var upstreamPort: UInt16 {
        lock.lock()
        defer { lock.unlock() }
        return currentUpstreamPort
    }

    private let frontSocket: Int32
    private var backSocket: Int32
    private var currentUpstreamPort: UInt16
    private var rebindRequested = false
    private var rebindError: UDPRelayError?
    private var target = sockaddr_in()
    private var client: sockaddr_in?
    private var random: SeededGenerator
    private var toTarget: Direction
    private var toClient: Direction
    private var order: UInt64 = 0

    private let lock = NSLock()
    private var stopRequested = false
    private var published = (toTarget: RelayDirectionStats(), toClient: RelayDirectionStats())
    private let finished = DispatchSemaphore(value: 0)
    private var running = false

    init(targetPort: UInt16, toTarget: RelayImpairment = .none, toClient: RelayImpairment = .none,
         seed: UInt64 = 1) throws {
        self.toTarget = Direction(impairment: toTarget)
        self.toClient = Direction(impairment: toClient)
        random = SeededGenerator(seed: seed)
        let front = try Self.boundSocket()
        let back: (fd: Int32, port: UInt16)
        do { back = try Self.boundSocket() } catch {
            close(front.fd)
            throw error
        }
        frontSocket = front.fd
        port = front.port
        backSocket = back.fd
        currentUpstreamPort = back.port
        target = Self.loopback(port: targetPort)
        running = true
        let thread = Thread { [self] in run() }
        thread.name = "UDPRelay"
        thread.start()
    }

    deinit { stop() }

    /// Ends the relay thread and closes its sockets; safe to call more than once.
    func stop() {
        lock.lock()
        let wasRunning = running
        stopRequested = true
        running = false
        lock.unlock()
        if wasRunning { finished.wait() }
    }

    /// Moves the relay's upstream side to a fresh port, as a NAT that lost its mapping would: the old
    /// port is closed, so answers sent to it are lost. Returns the new port.
    @discardableResult
    func rebind() throws -> UInt16 {
        lock.lock()
        let old = currentUpstreamPort
        rebindRequested = true
        lock.unlock()
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            lock.lock()
            let (pending, port, error) = (rebindRequested, currentUpstreamPort, rebindError)
            lock.unlock()
            if let error { throw error }
            if !pending && port != old { return port }
            Thread.sleep(forTimeInterval: 0.005)
        }
        throw UDPRelayError.system("rebind (relay thread did not answer)", ETIMEDOUT)
    }

    var stats: (toTarget: RelayDirectionStats, toClient: RelayDirectionStats) {
        lock.lock()
        defer { lock.unlock() }
        return published
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    private static func boundSocket() throws -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw UDPRelayError.system("socket", errno) }
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw UDPRelayError.system("bind", code)
        }
        // Generous buffers: loss should come from the impairment, not from the kernel.
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            let code = errno
            close(fd)
            throw UDPRelayError.system("getsockname", code)
        }
        return (fd, UInt16(bigEndian: actual.sin_port))
    }

    private static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = [pollfd(fd: frontSocket, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: backSocket, events: Int16(POLLIN), revents: 0)]
        while true {
            lock.lock()
            let stopping = stopRequested
            let rebinding = rebindRequested
            published = (toTarget.stats, toClient.stats)
            lock.unlock()
            if stopping { break }
            if rebinding {
                // Swapped on the relay thread only, so no datagram is sent from a closed socket.
                let outcome = Result(catching: { try Self.boundSocket() })
                lock.lock()
                switch outcome {
                case .success(let fresh):
                    close(backSocket)
                    backSocket = fresh.fd
                    fds[1].fd = fresh.fd
                    currentUpstreamPort = fresh.port
                case .failure(let error):
                    rebindError = error as? UDPRelayError ?? .system("rebind", EINVAL)
                }
                rebindRequested = false
                lock.unlock()
            }
            let current = Self.now()
            flush(&toTarget, now: current, towardClient: false)
            flush(&toClient, now: current, towardClient: true)
            // Sleep until the next datagram is due, but wake every 20 ms to notice stop().
            var timeout: Int32 = 20
            if let due = [toTarget.queue.first?.due, toClient.queue.first?.due].compactMap({ $0 }).min() {
                let wait = due > current ? Int32(min(20, (due - current + 999_999) / 1_000_000)) : 0
                timeout = wait
            }
            fds[0].revents = 0
            fds[1].revents = 0
            guard poll(&fds, 2, timeout) >= 0 || errno == EINTR else { break }
            if fds[0].revents & Int16(POLLIN) != 0 { receive(from: frontSocket, into: &buffer, towardClient: false) }
            if fds[1].revents & Int16(POLLIN) != 0 { receive(from: backSocket, into: &buffer, towardClient: true) }
        }
        close(frontSocket)
        close(backSocket)
        lock.lock()
        published = (toTarget.stats, toClient.stats)
        lock.unlock()
        finished.signal()
    }

    /// Reads everything waiting on one socket and queues it with its impairment applied.
    private func receive(from fd: Int32, into buffer: inout [UInt8], towardClient: Bool) {
        while true {
            var source = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let count = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &source) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length)
                    }
                }
            }
            guard count >= 0 else { return }
            if towardClient {
                // Only the target's answers go back; anything else reaching the back socket is noise.
                guard source.sin_port == target.sin_port else { continue }
                enqueue(Array(buffer[0..<count]), into: &toClient)
            } else {
                client = source
                enqueue(Array(buffer[0..<count]), into: &toTarget)
            }
        }
    }

    private func enqueue(_ bytes: [UInt8], into direction: inout Direction) {
        direction.stats.received += 1
        let impairment = direction.impairment
        if random.chance(impairment.lossPercent) {
            direction.stats.lost += 1
            return
        }
        var copies = 1
        if random.chance(impairment.duplicatePercent) {
            copies = 2
            direction.stats.duplicated += 1
        }
        let current = Self.now()
        for _ in 0..<copies {
            guard direction.queue.count < impairment.queueLimit else {
                direction.stats.overflowed += 1
                continue
            }
            var wait = impairment.delay
            if impairment.jitter > 0 { wait += Double.random(in: 0...impairment.jitter, using: &random) }
            if random.chance(impairment.reorderPercent) {
                wait += impairment.reorderExtraDelay
                direction.stats.reordered += 1
            }
            order += 1
            let item = Pending(due: current + UInt64(wait * 1e9), order: order, bytes: bytes)
            // Sorted by due time, then arrival: equal delays keep their order.
            let index = direction.queue.firstIndex { ($0.due, $0.order) > (item.due, item.order) }
                ?? direction.queue.endIndex
            direction.queue.insert(item, at: index)
        }
    }

    private func flush(_ direction: inout Direction, now current: UInt64, towardClient: Bool) {
        var sent = 0
        for item in direction.queue {
            guard item.due <= current else { break }
            sent += 1
            var destination: sockaddr_in
            if towardClient {
                guard let client else { continue }
                destination = client
            } else {
                destination = target
            }
            let fd = towardClient ? frontSocket : backSocket
            let result = item.bytes.withUnsafeBytes { raw in
                withUnsafePointer(to: &destination) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
            if result < 0 { direction.stats.sendErrors += 1 } else { direction.stats.forwarded += 1 }
        }
        if sent > 0 { direction.queue.removeFirst(sent) }
    }
}
