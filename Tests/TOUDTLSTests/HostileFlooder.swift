import Foundation

/// A thread that sends hostile datagrams to a listener from many source ports at a paced rate,
/// counting what it sent by kind. Replays come from a `CapturingRelay`'s recordings.
final class HostileFlooder: @unchecked Sendable {
    struct Tally {
        var sent: [HostileJunk.Kind: Int] = [:]
        /// Replays sent from the relay's own address (the real client's address).
        var fromClientAddress = 0
        var total: Int { sent.values.reduce(0, +) }
    }

    private let sockets: [RawUDPSocket]
    private let stopped = LockedBox(false)
    private let tally = LockedBox(Tally())
    private var thread: HelperThread?

    /// Sends about `perSecond` datagrams a second of `kinds` (chosen uniformly) until stopped or
    /// until `limit` datagrams have been sent.
    init(listenerPort: UInt16, sourcePorts: Int, seed: UInt64, kinds: [HostileJunk.Kind], perSecond: Int,
         limit: Int? = nil, relay: CapturingRelay?, clientHelloTemplate: [UInt8]?, sessionSID: UInt64?) throws {
        sockets = try (0..<sourcePorts).map { _ in try RawUDPSocket(receiveBuffer: 4096) }
        let sockets = self.sockets
        let stopped = self.stopped
        let tally = self.tally
        thread = HelperThread(name: "flooder") {
            var junk = HostileJunk(seed: seed, clientHelloTemplate: clientHelloTemplate, sessionSID: sessionSID)
            var capture = relay?.snapshot
            let burst = max(1, perSecond / 200)
            var local = Tally()
            var count = 0
            while !stopped.current, count < limit ?? .max {
                let burstStart = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<burst where count < limit ?? .max {
                    let kind = kinds[junk.random.below(kinds.count)]
                    let socket = sockets[junk.random.below(sockets.count)]
                    var datagram: [UInt8]
                    var viaRelay = false
                    switch kind {
                    case .replayedData, .replayedHandshake:
                        if count % 256 == 0 { capture = relay?.snapshot }
                        let pool = kind == .replayedData ? (capture?.clientRecent ?? []) : (capture?.clientHandshake ?? [])
                        guard !pool.isEmpty else { continue }
                        datagram = pool[junk.random.below(pool.count)]
                        viaRelay = relay != nil && junk.random.chance(25)
                    default:
                        datagram = junk.make(kind)
                    }
                    let sent: Bool
                    if viaRelay, let relay {
                        relay.inject(datagram)
                        sent = true
                        local.fromClientAddress += 1
                    } else {
                        sent = socket.send(datagram, toPort: listenerPort)
                    }
                    if sent { local.sent[kind, default: 0] += 1 }
                    count += 1
                }
                tally.withLock { $0 = local }
                let elapsed = DispatchTime.now().uptimeNanoseconds - burstStart
                if elapsed < 5_000_000 { usleep(UInt32((5_000_000 - elapsed) / 1000)) }
            }
            tally.withLock { $0 = local }
        }
    }

    var counts: Tally { tally.current }

    /// Waits until a flooder with a `limit` has sent it all.
    func waitUntilDone() {
        thread?.join()
        thread = nil
    }

    /// Stops sending and closes the sockets; the final tally stays readable.
    func stop() {
        stopped.withLock { $0 = true }
        thread?.join()
        thread = nil
        for socket in sockets { socket.close() }
    }

    deinit { stop() }
}
