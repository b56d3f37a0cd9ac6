import Foundation
import Testing

/// toudtls-netsim as a subprocess, on a short simulated run.
@Suite("toudtls-netsim", .serialized)
struct NetsimTests {
    func run(_ extra: [String]) throws -> (report: [String: Any], result: [String: Any]) {
        let process = try CLIProcess(["--losses", "0.01", "--algorithms", "newreno", "--duration", "1",
                                      "--warmup-limit", "1", "--settle", "0"] + extra, tool: "toudtls-netsim")
        #expect(process.wait(timeout: 120) == 0, "stderr: \(process.errorOutput)")
        let report = try process.lastJSONObject()
        let results = try #require(report["results"] as? [[String: Any]])
        return (report, try #require(results.first))
    }

    @Test("--loss-on-acks, as the README spells it, is accepted and applied")
    func lossOnACKs() throws {
        let (report, _) = try run(["--loss-on-acks"])
        #expect(report["lossOnACKs"] as? Bool == true, "\(report)")
    }

    @Test("predictions use the payload a segment carries (MSS less the timestamp option) and C = sqrt(3/2)")
    func predictionsUsePayload() throws {
        let (report, result) = try run(["--mss", "1399"])
        #expect(report["payloadPerSegment"] as? Int == 1387, "\(report)")
        // 1387 payload bytes in 1387 + 12 (timestamps) + 20 (TCP) + 20 (IP) = 1439 on the bottleneck.
        let ceiling = try #require(report["ceilingShareOfCapacity"] as? Double)
        #expect(abs(ceiling - 1387.0 / 1439.0) < 1e-9)
        // Mathis: 1387 B x 8 / 40 ms x sqrt(3/2) / sqrt(0.01).
        let mathis = try #require(result["mathisBitsPerSecond"] as? Double)
        #expect(abs(mathis - 1387 * 8 / 0.04 * 1.5.squareRoot() / 0.1) < 1)
        // Byte counting: no delayed-ACK variant.
        #expect(result["mathisDelayedACKBitsPerSecond"] == nil)
    }
}
