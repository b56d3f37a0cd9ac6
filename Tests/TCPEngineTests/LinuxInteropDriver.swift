#if os(Linux)
import Glibc
import NIOCore
import TCPEngine
import TCPSimulator
import TOUWire

/// One transfer between our engine (reached through the TUN device) and a kernel TCP socket in
/// the namespace, both directions at once, driven on this thread with the wall clock.
struct LinuxInteropDriver {
    enum Role { case engineClient, engineServer }

    struct Outcome {
        var engineReceived = 0
        var engineMismatchAt: Int?
        var enginePeerFinished = false
        var kernelReceived = 0
        var kernelMismatchAt: Int?
        var kernelSawEOF = false
        var kernelSent = 0
        var engineSYN: TCPOptions?
        var kernelSYN: TCPOptions?
        var engineState: TCPState?
        var engineCloseReason: TCPCloseReason?
        var stats: TCPStats?
        var droppedToKernel = 0
        var droppedToEngine = 0
        var badPackets: [String] = []
        var failure: String?
        var seconds = 0.0
    }

    let namespace: LinuxInteropNamespace
    let family: LinuxInteropFlow.Family
    let role: Role
    let bytes: Int
    /// Drop every Nth segment in each direction (nil: drop none).
    let dropEvery: Int?
    var wallClockLimit: TimeAmount = .seconds(150)

    static let kernelPort: UInt16 = 5001
    static let enginePort: UInt16 = 6080

    func run() throws -> Outcome {
        var flow = LinuxInteropFlow(
            family: family,
            engineAddress: family == .v4 ? LinuxInteropNamespace.engineIPv4 : LinuxInteropNamespace.engineIPv6,
            kernelAddress: family == .v4 ? LinuxInteropNamespace.kernelIPv4 : LinuxInteropNamespace.kernelIPv6)
        var outcome = Outcome()
        var configuration = TCPConfiguration(maximumSegmentSize: family == .v4 ? 1460 : 1440)
        configuration.timeWaitDuration = .seconds(1)
        let started = NIODeadline.now()
        // Distinct pattern streams per direction.
        let engineOrigin = 12_345
        let kernelOrigin = 777_777

        // Kernel side: a listener the engine connects to, or a socket connecting to the engine.
        var listener: Int32 = -1
        var kernel: Int32 = -1
        var engine: TCPConnection?
        try namespace.inside {
            let domain = family == .v4 ? AF_INET : AF_INET6
            let fd = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw LinuxInteropNamespace.SetupError(description: "socket: errno \(errno)") }
            switch role {
            case .engineClient:
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                guard Self.withAddress(flow.kernelAddress, port: Self.kernelPort, { bind(fd, $0, $1) }) == 0,
                    listen(fd, 4) == 0
                else { throw LinuxInteropNamespace.SetupError(description: "bind/listen: errno \(errno)") }
                listener = fd
            case .engineServer:
                let result = Self.withAddress(flow.engineAddress, port: Self.enginePort) { connect(fd, $0, $1) }
                guard result == 0 || errno == EINPROGRESS else {
                    throw LinuxInteropNamespace.SetupError(description: "connect: errno \(errno)")
                }
                kernel = fd
            }
        }
        defer {
            if listener >= 0 { close(listener) }
            if kernel >= 0 { close(kernel) }
        }
        if role == .engineClient {
            engine = TCPConnection.connect(
                localPort: 40_000, remotePort: Self.kernelPort, configuration: configuration,
                initialSequenceNumber: UInt32.random(in: 0...UInt32.max), now: started)
        }

        var engineWritten = 0
        var engineFinished = false
        var kernelShutdown = false
        var toKernelCount = 0
        var toEngineCount = 0
        var receiveBuffer = ByteBufferAllocator().buffer(capacity: 256 * 1024)

        func done() -> Bool {
            guard let engine else { return false }
            return outcome.engineReceived == bytes && outcome.enginePeerFinished && outcome.kernelReceived == bytes
                && outcome.kernelSawEOF && outcome.kernelSent == bytes && engine.isSendQueueEmptyAndAcknowledged
                && (engine.state == .timeWait || engine.state == .closed)
        }

        while !done() {
            let now = NIODeadline.now()
            if now - started > wallClockLimit {
                outcome.failure = "no completion within \(wallClockLimit.nanoseconds / 1_000_000_000) s"
                break
            }
            if let reason = outcome.engineCloseReason, reason != .normal {
                outcome.failure = "engine closed: \(reason)"
                break
            }
            // TUN to engine.
            while true {
                var packet = ByteBufferAllocator().buffer(capacity: 2048)
                let count = packet.writeWithUnsafeMutableBytes(minimumWritableBytes: 2048) { raw in
                    max(0, read(namespace.tun, raw.baseAddress, raw.count))
                }
                guard count > 0 else { break }
                let segment: TCPSegment
                do {
                    segment = try flow.unwrap(packet)
                } catch .notForUs {
                    continue
                } catch {
                    if outcome.badPackets.count < 10 { outcome.badPackets.append("\(error)") }
                    continue
                }
                toEngineCount += 1
                if let dropEvery, toEngineCount % dropEvery == 0 {
                    outcome.droppedToEngine += 1
                    continue
                }
                if segment.flags.contains(.syn), outcome.kernelSYN == nil { outcome.kernelSYN = segment.options }
                if engine != nil {
                    engine!.receive(segment, now: now)
                } else if let accepted = TCPConnection.accept(
                    syn: segment, configuration: configuration,
                    initialSequenceNumber: UInt32.random(in: 0...UInt32.max), now: now)
                {
                    engine = accepted
                }
            }
            if var connection = engine.take() {
                if let deadline = connection.nextDeadline, deadline <= now { connection.handleTimeout(now: now) }
                // Engine application: write its stream, then FIN; read and verify the kernel's.
                while !engineFinished, connection.sendBufferFreeSpace > 0 {
                    let length = min(64 * 1024, bytes - engineWritten, connection.sendBufferFreeSpace)
                    if length > 0 {
                        let chunk = PayloadPattern.slice(origin: engineOrigin, position: engineWritten, length: length)
                        engineWritten += connection.write(chunk)
                    }
                    if engineWritten == bytes {
                        connection.finishWriting()
                        engineFinished = true
                    }
                }
                while let event = connection.pollEvent() {
                    switch event {
                    case .peerFinished: outcome.enginePeerFinished = true
                    case .closed(let reason): outcome.engineCloseReason = reason
                    default: break
                    }
                }
                while let chunk = connection.read(maximumBytes: 1 << 20) {
                    if outcome.engineMismatchAt == nil,
                        !PayloadPattern.matches(chunk, origin: kernelOrigin, position: outcome.engineReceived)
                    {
                        outcome.engineMismatchAt = outcome.engineReceived
                    }
                    outcome.engineReceived += chunk.readableBytes
                }
                // Engine to TUN.
                while let segment = connection.pollTransmit(now: now) {
                    if segment.flags.contains(.syn), outcome.engineSYN == nil { outcome.engineSYN = segment.options }
                    toKernelCount += 1
                    if let dropEvery, toKernelCount % dropEvery == 0 {
                        outcome.droppedToKernel += 1
                        continue
                    }
                    let packet = flow.wrap(segment)
                    let written = packet.withUnsafeReadableBytes { write(namespace.tun, $0.baseAddress, $0.count) }
                    if written != packet.readableBytes, outcome.badPackets.count < 10 {
                        outcome.badPackets.append("TUN write returned \(written), errno \(errno)")
                    }
                }
                engine = connection
            }
            // Kernel application.
            if kernel < 0, listener >= 0 {
                let accepted = accept(listener, nil, nil)
                if accepted >= 0 {
                    // Accepted sockets do not inherit O_NONBLOCK on Linux.
                    _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL, 0) | O_NONBLOCK)
                    kernel = accepted
                }
            }
            if kernel >= 0 {
                while outcome.kernelSent < bytes {
                    let chunk = PayloadPattern.slice(
                        origin: kernelOrigin, position: outcome.kernelSent, length: min(256 * 1024, bytes - outcome.kernelSent))
                    let sent = chunk.withUnsafeReadableBytes { send(kernel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    guard sent > 0 else { break }
                    outcome.kernelSent += sent
                }
                if outcome.kernelSent == bytes, !kernelShutdown {
                    shutdown(kernel, Int32(SHUT_WR))
                    kernelShutdown = true
                }
                while !outcome.kernelSawEOF {
                    receiveBuffer.clear()
                    var result = 0
                    receiveBuffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 256 * 1024) { raw in
                        result = recv(kernel, raw.baseAddress, raw.count, 0)
                        return max(0, result)
                    }
                    if result == 0 {
                        outcome.kernelSawEOF = true
                    } else if result < 0 {
                        if errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR, errno != ENOTCONN {
                            outcome.failure = "kernel recv: errno \(errno)"
                        }
                        break
                    } else {
                        if outcome.kernelMismatchAt == nil,
                            !PayloadPattern.matches(receiveBuffer, origin: engineOrigin, position: outcome.kernelReceived)
                        {
                            outcome.kernelMismatchAt = outcome.kernelReceived
                        }
                        outcome.kernelReceived += result
                    }
                }
            }
            if outcome.failure != nil { break }
            // Sleep until the TUN or the kernel socket has something, or the engine's next deadline.
            var descriptors = [pollfd(fd: namespace.tun, events: Int16(POLLIN), revents: 0)]
            if kernel >= 0 {
                let wantsOut = outcome.kernelSent < bytes
                descriptors.append(
                    pollfd(fd: kernel, events: Int16(POLLIN) | (wantsOut ? Int16(POLLOUT) : 0), revents: 0))
            } else if listener >= 0 {
                descriptors.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            }
            var timeout: Int32 = 20
            if let deadline = engine?.nextDeadline {
                let milliseconds = (deadline - NIODeadline.now()).nanoseconds / 1_000_000
                timeout = Int32(max(0, min(Int64(timeout), milliseconds)))
            }
            _ = poll(&descriptors, nfds_t(descriptors.count), timeout)
        }
        outcome.engineState = engine?.state
        outcome.stats = engine?.stats
        outcome.seconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        return outcome
    }

    /// Calls `body` with a sockaddr for `address` (4 or 16 bytes) and `port`.
    static func withAddress(
        _ address: [UInt8], port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32
    ) -> Int32 {
        if address.count == 4 {
            var storage = sockaddr_in()
            storage.sin_family = sa_family_t(AF_INET)
            storage.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &storage.sin_addr) { $0.copyBytes(from: address) }
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        var storage = sockaddr_in6()
        storage.sin6_family = sa_family_t(AF_INET6)
        storage.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &storage.sin6_addr) { $0.copyBytes(from: address) }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
}
#endif
