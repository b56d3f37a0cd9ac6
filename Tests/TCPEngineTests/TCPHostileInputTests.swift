import NIOCore
import Testing
import TOUWire

@testable import TCPEngine

/// Segments from a broken or hostile peer: mostly plausible ones (in-window sequence numbers,
/// ACKs and SACK blocks inside the flight, in any order and any combination), some wild. The
/// engine must neither crash nor corrupt its scoreboard.
@Suite struct HostileInputTests {
    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6])
    func randomSegmentsNeverBreakTheScoreboard(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var configuration = modernConfiguration()
        configuration.sendBufferSize = 300_000
        var c = modernConnection(configuration: configuration)
        var written = 0
        var now = at(100)
        func random(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
        for step in 0..<4000 {
            now = now + .microseconds(Int64(random(0...3000)))
            written += c.write(bytes(count: random(0...5000)))
            _ = c.drain(at: now)
            let stats = c.stats
            let acked = written - (configuration.sendBufferSize - c.sendBufferFreeSpace)
            let una = localISS &+ 1 &+ UInt32(truncatingIfNeeded: acked)
            let flight = max(0, stats.bytesSent - acked)
            let wild = random(0...4) == 0
            func inFlight() -> UInt32 { una &+ UInt32(random(0...flight)) }
            var flags: TCPFlags = .ack
            if random(0...60) == 0 { flags.insert(.fin) }
            if wild, random(0...10) == 0 { flags.insert(.syn) }
            if wild, random(0...10) == 0 { flags.insert(.rst) }
            var options = TCPOptions()
            options.timestamps = TCPTimestamps(
                value: peerTSBase &+ UInt32(step) &- (wild ? UInt32(random(0...200)) : 0),
                echoReply: c.timestampValue(at: now - .milliseconds(Int64(random(0...300)))))
            for _ in 0..<random(0...4) {
                let left = wild ? UInt32.random(in: 0...UInt32.max, using: &rng) : inFlight()
                let right = wild ? left &+ UInt32(random(0...100_000)) : max(left, inFlight())
                options.sackBlocks.append(block(left, right))
            }
            let received = UInt32(truncatingIfNeeded: stats.bytesReceived)
            let sequence = remoteISS &+ 1 &+ received &+ UInt32(random(0...3000)) &- (wild ? 5000 : 0)
            let segment = TCPSegment(
                sourcePort: remotePort, destinationPort: localPort, sequenceNumber: sequence,
                acknowledgmentNumber: wild ? UInt32.random(in: 0...UInt32.max, using: &rng) : inFlight(),
                flags: flags, window: UInt16(random(0...65535)), options: options,
                payload: bytes(count: random(0...3) == 0 ? random(1...1500) : 0))
            c.receive(segment, now: now)
            if let deadline = c.nextDeadline, deadline <= now { c.handleTimeout(now: now) }
            _ = c.drain(at: now)
            _ = c.drainEvents()
            _ = c.read(maximumBytes: .max)
            if let problem = c.invariantViolation {
                Issue.record("step \(step): \(problem)")
                return
            }
            if c.state == .closed { break }
        }
        let stats = c.stats
        // The run really exercised SACK-based recovery.
        #expect(stats.sackBlocksReceived > 1000)
        #expect(stats.retransmissions > 0)
    }
}
