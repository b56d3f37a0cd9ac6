import CommandLineSupport
import Foundation
import NIOCore
import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// -v progress and summary lines, and --stats-json, for one connection.
struct TransferReport: Sendable {
    let connection: TOUConnection
    let started = ContinuousClock.now

    /// About once a second while `stderr` is a terminal: bytes each way, the rate over the last
    /// second, the smoothed RTT and retransmissions. Runs until cancelled.
    func progressWhileTerminal() -> Task<Void, Never>? {
        guard isatty(STDERR_FILENO) != 0 else { return nil }
        return Task {
            var last = (bytes: 0, at: ContinuousClock.now)
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { return }
                let stats = await connection.stats
                let now = ContinuousClock.now
                let bytes = stats.bytesSent + stats.bytesReceived
                let rate = Double(bytes - last.bytes) / max(Self.seconds(now - last.at), 1e-3)
                last = (bytes, now)
                CommandLineTool.printToStandardError(
                    "toudtls-cat: \(Self.amount(stats.bytesSent)) sent, \(Self.amount(stats.bytesReceived)) received, "
                        + "\(Self.amount(Int(rate)))/s, rtt \(Self.milliseconds(stats.smoothedRTT)), "
                        + "\(stats.retransmissions) retransmissions")
            }
        }
    }

    /// One line: totals, duration, mean rate, RTT, retransmissions and drops.
    func summary(_ stats: TOUConnectionStats) -> String {
        let seconds = Self.seconds(ContinuousClock.now - started)
        let rate = Double(stats.bytesSent + stats.bytesReceived) / max(seconds, 1e-3)
        return "toudtls-cat: summary: sent \(stats.bytesSent) B, received \(stats.bytesReceived) B in "
            + String(format: "%.2f s", seconds) + " (\(Self.amount(Int(rate)))/s), rtt \(Self.milliseconds(stats.smoothedRTT)), "
            + "\(stats.retransmissions) retransmissions, \(stats.droppedDatagrams) dropped datagrams"
    }

    /// The final counters as a JSON object: TCP, DTLS, the path, and drops (this connection's and
    /// its UDP endpoint's, by reason).
    func json(_ stats: TOUConnectionStats, endpoint: TOUEndpointCounters, outcome: String) -> [String: Any] {
        func nanoseconds(_ amount: TimeAmount?) -> Any { amount.map { Int($0.nanoseconds) } ?? NSNull() }
        return [
            "outcome": outcome,
            "durationSeconds": Self.seconds(ContinuousClock.now - started),
            "tcp": [
                "bytesSent": stats.bytesSent, "bytesReceived": stats.bytesReceived,
                "segmentsSent": stats.segmentsSent, "segmentsReceived": stats.segmentsReceived,
                "retransmissions": stats.retransmissions, "retransmissionTimeouts": stats.retransmissionTimeouts,
                "fastRetransmits": stats.fastRetransmits, "spuriousRetransmissions": stats.spuriousRetransmissions,
                "tailLossProbes": stats.tailLossProbes, "sackBlocksSent": stats.sackBlocksSent,
                "sackBlocksReceived": stats.sackBlocksReceived,
                "smoothedRTTNanoseconds": nanoseconds(stats.smoothedRTT),
                "rttVarianceNanoseconds": nanoseconds(stats.rttVariance),
                "retransmissionTimeoutNanoseconds": Int(stats.retransmissionTimeout.nanoseconds),
                "congestionWindow": stats.congestionWindow, "slowStartThreshold": stats.slowStartThreshold,
                "pacingRate": stats.pacingRate.map { $0 as Any } ?? NSNull(),
            ] as [String: Any],
            "dtls": [
                "cipherSuite": stats.cipherSuite.map { $0 as Any } ?? NSNull(),
                "resumed": connection.isResumed,
                "peerCertificateSubject": connection.peerCertificateSubject.map { $0 as Any } ?? NSNull(),
            ] as [String: Any],
            "path": [
                "localAddress": connection.localAddress.map { $0.ipAndPort as Any } ?? NSNull(),
                "remoteAddress": connection.remoteAddress.ipAndPort,
                "addressChanges": stats.addressChanges,
                "amplificationLimitedDatagrams": stats.amplificationLimitedDatagrams,
            ] as [String: Any],
            "drops": [
                "connectionDroppedDatagrams": stats.droppedDatagrams,
                "connectionMalformedSegments": stats.malformedSegments,
                "endpointMalformed": endpoint.droppedMalformed,
                "endpointUnknownSession": endpoint.droppedUnknownSession,
                "endpointBadAttempt": endpoint.droppedBadAttempt,
                "endpointOverLimit": endpoint.droppedOverLimit,
                "endpointInSession": endpoint.droppedBySession,
                "endpointTotal": endpoint.totalDropped,
            ] as [String: Any],
            "endpoint": [
                "datagramsReceived": endpoint.datagramsReceived, "datagramsSent": endpoint.datagramsSent,
                "segmentationWrites": endpoint.segmentationWrites, "coalescedReads": endpoint.coalescedReads,
            ] as [String: Any],
        ]
    }

    /// Writes `object` to `path`; a failure is reported, never fatal (the transfer is done).
    static func write(_ object: [String: Any], to path: String) {
        do {
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: path))
        } catch {
            CommandLineTool.printToStandardError("toudtls-cat: warning: cannot write --stats-json \(path): \(error.localizedDescription)")
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        let parts = duration.components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }

    /// 1234567 -> "1.23 MB" (decimal units, as rates are usually read).
    static func amount(_ bytes: Int) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.2f %@", value, units[unit])
    }

    static func milliseconds(_ amount: TimeAmount?) -> String {
        amount.map { String(format: "%.3f ms", Double($0.nanoseconds) / 1e6) } ?? "-"
    }
}
