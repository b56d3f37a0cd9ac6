import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Tools for the hostile-input tests: plain BSD sockets (so the junk never goes through the
/// library it attacks), a seeded RNG, a capturing relay and readers of kernel counters.

/// A lock around a value, for state shared between a test and its helper threads.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    var current: Value { withLock { $0 } }
}

/// SplitMix64: small, seedable, good enough to pick junk reproducibly.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            var word = next()
            for _ in 0..<8 where index < count {
                out[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return out
    }

    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(max(bound, 1))) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

enum HostileSocketError: Error, CustomStringConvertible {
    case system(String, Int32)
    var description: String {
        switch self {
        case .system(let call, let code): return "\(call) failed: \(String(cString: strerror(code)))"
        }
    }
}

/// A non-blocking IPv4 UDP socket bound to 127.0.0.1 on an ephemeral port.
final class RawUDPSocket: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let closed = LockedBox(false)

    init(receiveBuffer: Int? = nil) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw HostileSocketError.system("socket", errno) }
        if var size = receiveBuffer.map(Int32.init) {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            let code = errno
            Glibc.close(fd)
            throw HostileSocketError.system("bind", code)
        }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        self.fd = fd
        self.port = UInt16(bigEndian: local.sin_port)
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    /// Sends to 127.0.0.1:`port`; false if the kernel refused (e.g. the send buffer is full).
    @discardableResult
    func send(_ bytes: [UInt8], toPort port: UInt16) -> Bool {
        var address = Self.loopback(port: port)
        let sent = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return sent == bytes.count
    }

    /// One datagram and its source port, or nil if none is waiting.
    func receive(maximum: Int = 65_536) -> (bytes: [UInt8], fromPort: UInt16)? {
        var buffer = [UInt8](repeating: 0, count: maximum)
        var source = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &source) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        return (Array(buffer[0..<count]), UInt16(bigEndian: source.sin_port))
    }

    func close() {
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { Glibc.close(fd) }
    }

    deinit { close() }
}

/// Waits until one of `sockets` is readable or `milliseconds` pass.
func pollReadable(_ sockets: [RawUDPSocket], milliseconds: Int32) -> [Bool] {
    var fds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
    _ = poll(&fds, nfds_t(fds.count), milliseconds)
    return fds.map { $0.revents & Int16(POLLIN) != 0 }
}

/// A thread running `body` until it returns; `join()` waits for it.
final class HelperThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        let done = self.done
        let thread = Thread {
            body()
            done.signal()
        }
        thread.name = name
        thread.start()
    }

    func join() { done.wait() }
}

/// A UDP relay between one client and a listener on loopback that records what it forwards, so a
/// test can replay or mutate real datagrams of a live session. Datagrams are recorded only after
/// they have been forwarded, so a replay can never overtake its original.
final class CapturingRelay: @unchecked Sendable {
    struct Capture {
        /// The first datagrams each way (the handshake), kept for the whole test.
        var clientHandshake: [[UInt8]] = []
        var serverHandshake: [[UInt8]] = []
        /// The most recent datagrams each way, a ring.
        var clientRecent: [[UInt8]] = []
        var serverRecent: [[UInt8]] = []
        var clientNext = 0
        var serverNext = 0
        var forwarded = 0
        /// The first datagrams both ways in the order the relay forwarded them.
        var ordered: [(fromClient: Bool, bytes: [UInt8])] = []
    }

    static let handshakeKept = 32
    static let recentKept = 1024

    let clientFacing: RawUDPSocket
    /// The relay's address as the listener sees it (the "client address").
    let serverFacing: RawUDPSocket
    let listenerPort: UInt16
    private let capture = LockedBox(Capture())
    private let stopped = LockedBox(false)
    private var thread: HelperThread?

    var port: UInt16 { clientFacing.port }

    init(listenerPort: UInt16) throws {
        clientFacing = try RawUDPSocket(receiveBuffer: 4 << 20)
        serverFacing = try RawUDPSocket(receiveBuffer: 4 << 20)
        self.listenerPort = listenerPort
        thread = HelperThread(name: "relay") { [self] in run() }
    }

    private let clientPort = LockedBox<UInt16?>(nil)

    private func run() {
        var clientPort: UInt16?
        while !stopped.current {
            let ready = pollReadable([clientFacing, serverFacing], milliseconds: 20)
            if ready[0] {
                while let (bytes, from) = clientFacing.receive(maximum: 2048) {
                    if clientPort != from { self.clientPort.withLock { $0 = from } }
                    clientPort = from
                    serverFacing.send(bytes, toPort: listenerPort)
                    record(bytes, fromClient: true)
                }
            }
            if ready[1] {
                while let (bytes, _) = serverFacing.receive(maximum: 2048) {
                    if let clientPort { clientFacing.send(bytes, toPort: clientPort) }
                    record(bytes, fromClient: false)
                }
            }
        }
    }

    private func record(_ bytes: [UInt8], fromClient: Bool) {
        capture.withLock { capture in
            capture.forwarded += 1
            if capture.ordered.count < 2 * Self.handshakeKept { capture.ordered.append((fromClient, bytes)) }
            if fromClient {
                if capture.clientHandshake.count < Self.handshakeKept {
                    capture.clientHandshake.append(bytes)
                } else if capture.clientRecent.count < Self.recentKept {
                    capture.clientRecent.append(bytes)
                } else {
                    capture.clientRecent[capture.clientNext] = bytes
                    capture.clientNext = (capture.clientNext + 1) % Self.recentKept
                }
            } else {
                if capture.serverHandshake.count < Self.handshakeKept {
                    capture.serverHandshake.append(bytes)
                } else if capture.serverRecent.count < Self.recentKept {
                    capture.serverRecent.append(bytes)
                } else {
                    capture.serverRecent[capture.serverNext] = bytes
                    capture.serverNext = (capture.serverNext + 1) % Self.recentKept
                }
            }
        }
    }

    var snapshot: Capture { capture.current }

    /// Sends `bytes` to the listener from the relay's own address, as if the client had.
    func inject(_ bytes: [UInt8]) {
        serverFacing.send(bytes, toPort: listenerPort)
    }

    /// Sends `bytes` to the client from the relay's client-facing address, as if the server had.
    func injectToClient(_ bytes: [UInt8]) {
        if let port = clientPort.current { clientFacing.send(bytes, toPort: port) }
    }

    func stop() {
        stopped.withLock { $0 = true }
        thread?.join()
        thread = nil
        clientFacing.close()
        serverFacing.close()
    }

    deinit { stop() }
}

/// Minimal views of captured datagrams, parsed by hand so the tests do not trust the codec
/// they attack.
enum CapturedDatagram {
    /// GUE header length in bytes, if the first word is sane.
    static func headerLength(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        let length = 4 + 4 * Int(bytes[0] & 0x1F)
        return bytes.count >= length ? length : nil
    }

    static func flags(_ bytes: [UInt8]) -> UInt16 {
        bytes.count >= 4 ? UInt16(bytes[2]) << 8 | UInt16(bytes[3]) : 0
    }

    /// The destination SID, when D is set.
    static func destinationSID(_ bytes: [UInt8]) -> UInt64? {
        guard let length = headerLength(bytes), flags(bytes) & 0x0080 != 0 else { return nil }
        return bytes[(length - 8)..<length].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The content type of the first DTLS record after the GUE header.
    static func firstContentType(_ bytes: [UInt8]) -> UInt8? {
        guard let length = headerLength(bytes), bytes.count > length else { return nil }
        return bytes[length]
    }

    /// True for an initial ClientHello: S, no D, a handshake record whose message type is 1.
    static func isClientHello(_ bytes: [UInt8]) -> Bool {
        guard let length = headerLength(bytes), bytes.count > length + 13 else { return false }
        return bytes[length] == 22 && bytes[length + 13] == 1
    }
}

/// Kernel and process counters read from /proc (Linux).
enum ProcCounters {
    /// The whole of a /proc file. Foundation's `String(contentsOfFile:)` stops after one read: the
    /// first 4 KiB of /proc/net/udp, about 30 sockets, where tests running side by side hold
    /// hundreds.
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(contentsOf: chunk[0..<count])
        }
    }

    /// Resident set size of this process in KiB.
    static func residentKiB() -> Int? {
        guard let status = read("/proc/self/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return line.split(separator: " ").compactMap { Int($0) }.first
        }
        return nil
    }

    /// UDP datagrams the kernel dropped host-wide because a receive buffer was full (RcvbufErrors).
    /// An upper bound on what the listener lost before the library saw it: the per-socket
    /// drops column of /proc/net/udp stays 0 on this kernel even when its buffer overflows.
    static func udpReceiveBufferErrors() -> Int {
        guard let snmp = read("/proc/net/snmp") else { return 0 }
        let lines = snmp.split(separator: "\n").filter { $0.hasPrefix("Udp:") }
        guard lines.count >= 2 else { return 0 }
        let names = lines[0].split(separator: " ")
        let values = lines[1].split(separator: " ")
        guard let index = names.firstIndex(of: "RcvbufErrors"), index < values.count else { return 0 }
        return Int(values[index]) ?? 0
    }
}
