import Foundation
import Testing

/// toudtls-bench's in-process benchmark as a subprocess.
@Suite("toudtls-bench", .serialized)
struct BenchTests {
    @Test("--plain bulk times the transfer and the close apart; the close returns in TIME-WAIT, not after plain mode's linger of at least 2 s")
    func plainBulkExcludesClose() throws {
        let process = try CLIProcess(["--plain", "--megabytes", "1", "--rr-seconds", "0.2", "--setups", "1",
                                      "--certs", CLIProcess.certs], tool: "toudtls-bench")
        #expect(process.wait(timeout: 120) == 0, "stderr: \(process.errorOutput)")
        let json = try process.lastJSONObject()
        let line = "\(json)"
        let seconds = try #require(json["bulk_seconds"] as? Double, "\(line)")
        let closeSeconds = try #require(json["bulk_close_seconds"] as? Double, "\(line)")
        let rate = try #require(json["bulk_MBps"] as? Double, "\(line)")
        // The active closer of a plain session lingers max(2 s, 3 RTO) from the peer's FIN; close()
        // returns as the linger begins (TIME-WAIT), and neither figure includes it.
        #expect(seconds + closeSeconds < 2, "\(line)")
        // MB/s comes from the transfer's time alone (both figures are rounded in the JSON).
        let expected = 1.048576 / seconds
        #expect(abs(rate - expected) <= 0.02 * expected + 0.01, "\(line)")
    }
}
