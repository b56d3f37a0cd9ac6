import CommandLineSupport
import FoundationEssentials
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
            + TextFormatting.fixed(seconds, places: 2) + " s (\(Self.amount(Int(rate)))/s), rtt \(Self.milliseconds(stats.smoothedRTT)), "
            + "\(stats.retransmissions) retransmissions, \(stats.droppedDatagrams) dropped datagrams"
    }

    /// The final counters as a JSON object: TCP, DTLS, the path, and drops (this connection's and
    /// its UDP endpoint's, by reason).
    func json(_ stats: TOUConnectionStats, endpoint: TOUEndpointCounters, outcome: String) -> JSONDocument {
        func nanoseconds(_ amount: TimeAmount?) -> JSONDocument { .optional(amount.map { Int($0.nanoseconds) }) }
        let tcp: [String: JSONDocument] = [
            "bytesSent": .int(stats.bytesSent), "bytesReceived": .int(stats.bytesReceived),
            "segmentsSent": .int(stats.segmentsSent), "segmentsReceived": .int(stats.segmentsReceived),
            "retransmissions": .int(stats.retransmissions), "retransmissionTimeouts": .int(stats.retransmissionTimeouts),
            "fastRetransmits": .int(stats.fastRetransmits), "spuriousRetransmissions": .int(stats.spuriousRetransmissions),
            "tailLossProbes": .int(stats.tailLossProbes), "sackBlocksSent": .int(stats.sackBlocksSent),
            "sackBlocksReceived": .int(stats.sackBlocksReceived),
            "smoothedRTTNanoseconds": nanoseconds(stats.smoothedRTT),
            "rttVarianceNanoseconds": nanoseconds(stats.rttVariance),
            "retransmissionTimeoutNanoseconds": .int(Int(stats.retransmissionTimeout.nanoseconds)),
            "congestionWindow": .int(stats.congestionWindow), "slowStartThreshold": .int(stats.slowStartThreshold),
            "pacingRate": .optional(stats.pacingRate),
        ]
        let dtls: [String: JSONDocument] = [
            "cipherSuite": .optional(stats.cipherSuite),
            "resumed": .bool(connection.isResumed),
            "peerCertificateSubject": .optional(connection.peerCertificateSubject),
        ]
        let path: [String: JSONDocument] = [
            "localAddress": .optional(connection.localAddress?.ipAndPort),
            "remoteAddress": .string(connection.remoteAddress.ipAndPort),
            "addressChanges": .int(stats.addressChanges),
            "amplificationLimitedDatagrams": .int(stats.amplificationLimitedDatagrams),
        ]
        let drops: [String: JSONDocument] = [
            "connectionDroppedDatagrams": .int(stats.droppedDatagrams),
            "connectionMalformedSegments": .int(stats.malformedSegments),
            "endpointMalformed": .int(endpoint.droppedMalformed),
            "endpointUnknownSession": .int(endpoint.droppedUnknownSession),
            "endpointBadAttempt": .int(endpoint.droppedBadAttempt),
            "endpointOverLimit": .int(endpoint.droppedOverLimit),
            "endpointInSession": .int(endpoint.droppedBySession),
            "endpointTotal": .int(endpoint.totalDropped),
        ]
        let endpointCounters: [String: JSONDocument] = [
            "datagramsReceived": .int(endpoint.datagramsReceived), "datagramsSent": .int(endpoint.datagramsSent),
            "segmentationWrites": .int(endpoint.segmentationWrites), "coalescedReads": .int(endpoint.coalescedReads),
        ]
        return .object([
            "outcome": .string(outcome),
            "durationSeconds": .double(Self.seconds(ContinuousClock.now - started)),
            "tcp": .object(tcp), "dtls": .object(dtls), "path": .object(path), "drops": .object(drops),
            "endpoint": .object(endpointCounters),
        ])
    }

    /// Writes `document` to `path`; a failure is reported, never fatal (the transfer is done).
    static func write(_ document: JSONDocument, to path: String) {
        let bytes = Array((document.pretty() + "\n").utf8)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        var failure: Int32?
        if descriptor < 0 {
            failure = errno
        } else {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, bytes.count - offset) }
                if written < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    break
                }
                offset += written
            }
            close(descriptor)
        }
        if let failure {
            CommandLineTool.printToStandardError(
                "toudtls-cat: warning: cannot write --stats-json \(path): \(String(cString: strerror(failure)))")
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
        return unit == 0 ? "\(bytes) B" : TextFormatting.fixed(value, places: 2) + " " + units[unit]
    }

    static func milliseconds(_ amount: TimeAmount?) -> String {
        amount.map { TextFormatting.fixed(Double($0.nanoseconds) / 1e6, places: 3) + " ms" } ?? "-"
    }
}
