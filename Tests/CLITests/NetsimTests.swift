import Foundation
import Testing

/// toudtls-netsim as a subprocess, on a short simulated run.
@Suite("toudtls-netsim", .serialized)
struct NetsimTests {
    func run(_ extra: [String]) throws -> (report: [String: Any], result: [String: Any]) {
        let process = try CLIProcess(["--losses", "0.01", "--algorithms", "newreno", "--duration", "1",
                                      "--warmup-limit", "1", "--settle", "0"] + extra, tool: "toudtls-netsim")
        #expect(process.wait(timeout: 120) == 0, "stderr: \(process.errorOutput)")
        let line = try #require(process.outputText.split(separator: "\n").last)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let results = try #require(report["results"] as? [[String: Any]])
        return (report, try #require(results.first))
    }

    @Test("--loss-on-acks, as the README spells it, is accepted and applied")
    func lossOnACKs() throws {
        let (report, _) = try run(["--loss-on-acks"])
        #expect(report["lossOnACKs"] as? Bool == true, "\(report)")
    }
}
