#if os(Linux)
import Foundation
import NIOCore
import TCPEngine
import Testing
import TOUWire

/// Our engine against the Linux kernel's TCP through a TUN device in a namespace of the test's
/// own. Runs as root where /dev/net/tun exists; elsewhere skips with the reason.
@Suite(
    .serialized,
    .enabled(if: LinuxInteropNamespace.unavailableReason == nil, Comment(rawValue: LinuxInteropNamespace.unavailableReason ?? ""))
)
struct LinuxInteropTests {
    /// 50 as the issue asks; LINUX_INTEROP_MB overrides it for quick local runs.
    static let megabytes = ProcessInfo.processInfo.environment["LINUX_INTEROP_MB"].flatMap { Int($0) } ?? 50

    @Test(arguments: [
        (LinuxInteropDriver.Role.engineClient, LinuxInteropFlow.Family.v4, false),
        (.engineServer, .v6, false),
        (.engineClient, .v6, true),
        (.engineServer, .v4, true),
    ])
    func fiftyMegabytesEachWayIntact(role: LinuxInteropDriver.Role, family: LinuxInteropFlow.Family, dropEvery50th: Bool) throws {
        let tag = "\(role == .engineClient ? "c" : "s")\(family == .v4 ? 4 : 6)\(dropEvery50th ? "d" : "")"
        let namespace = try LinuxInteropNamespace(tag: tag)
        defer { namespace.remove() }
        let bytes = Self.megabytes * 1_000_000
        let driver = LinuxInteropDriver(
            namespace: namespace, family: family, role: role, bytes: bytes, dropEvery: dropEvery50th ? 50 : nil)
        let outcome = try driver.run()
        let context = "\(role) over IP\(family) drop \(dropEvery50th): \(outcome)"
        #expect(outcome.failure == nil, "\(context)")
        #expect(outcome.badPackets.isEmpty, "\(context)")
        #expect(outcome.engineReceived == bytes && outcome.engineMismatchAt == nil && outcome.enginePeerFinished, "\(context)")
        #expect(outcome.kernelReceived == bytes && outcome.kernelMismatchAt == nil && outcome.kernelSawEOF, "\(context)")
        #expect(outcome.engineCloseReason == nil || outcome.engineCloseReason == .normal, "\(context)")
        if dropEvery50th {
            #expect(outcome.droppedToKernel > bytes / 1500 / 100 && outcome.droppedToEngine > bytes / 1500 / 100, "\(context)")
            #expect((outcome.stats?.retransmissions ?? 0) >= outcome.droppedToKernel / 2, "\(context)")
        }
        // SACK, timestamps and window scaling offered by both SYNs, so negotiated.
        let ours = try #require(outcome.engineSYN, "\(context)")
        let theirs = try #require(outcome.kernelSYN, "\(context)")
        for (side, options) in [("engine", ours), ("kernel", theirs)] {
            #expect(options.windowScale != nil, "\(side) SYN lacks window scale: \(options)")
            #expect(options.sackPermitted, "\(side) SYN lacks SACK-permitted: \(options)")
            #expect(options.timestamps != nil, "\(side) SYN lacks timestamps: \(options)")
            #expect(options.maximumSegmentSize != nil, "\(side) SYN lacks MSS: \(options)")
        }
        #expect(outcome.stats?.selectiveAcknowledgmentsEnabled == true && outcome.stats?.timestampsEnabled == true)
        print("Linux interop \(tag): \(String(format: "%.1f", outcome.seconds)) s, "
            + "retransmissions \(outcome.stats?.retransmissions ?? -1), fast \(outcome.stats?.fastRetransmits ?? -1), "
            + "RTOs \(outcome.stats?.rtoExpiries ?? -1), SACK blocks received \(outcome.stats?.sackBlocksReceived ?? -1), dropped \(outcome.droppedToKernel)/\(outcome.droppedToEngine)")
    }
}
#endif
