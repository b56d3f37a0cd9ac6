import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Whether this test may give itself a private /etc/hosts: a mount namespace (`unshare -m`,
/// root) in which a bind mount makes "localhost" resolve to both ::1 and 127.0.0.1, whatever the
/// machine's own file says. The real /etc/hosts is never touched.
private let privateHostsFile: Bool = {
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
    probe.arguments = ["-m", "true"]
    probe.standardError = FileHandle.nullDevice
    guard (try? probe.run()) != nil else {
        print("skipping the CLI Happy Eyeballs tests: no /usr/bin/unshare")
        return false
    }
    probe.waitUntilExit()
    if probe.terminationStatus != 0 { print("skipping the CLI Happy Eyeballs tests: unshare -m is not permitted here") }
    return probe.terminationStatus == 0
}()

/// Happy Eyeballs from the command line: "localhost" (both ::1 and 127.0.0.1) with a listener
/// on one family only; the client connects through whichever answers.
@Suite("toudtls-cat Happy Eyeballs", .serialized, .enabled(if: privateHostsFile))
struct CatHappyEyeballsTests {
    let certs = CLIProcess.certs

    @Test("localhost with a listener on only IPv4, or only IPv6: the client connects either way",
          arguments: ["127.0.0.1", "::1"])
    func oneFamilyListening(listenHost: String) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-he-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let hosts = directory.appendingPathComponent("hosts").path
        try "127.0.0.1 localhost\n::1 localhost\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        let cat = CLIProcess.executable().path
        let out = directory.appendingPathComponent("listener.out").path
        let err = directory.appendingPathComponent("listener.err").path
        // Inside the namespace: the listener on one family, then the client to "localhost".
        let script = """
            mount --bind \(hosts) /etc/hosts || exit 97
            \(cat) -l -v --cert \(certs)/server.pem --key \(certs)/server.key \(listenHost) 0 >\(out) 2>\(err) </dev/null &
            listener=$!
            for i in $(seq 100); do grep -q 'listening on' \(err) && break; sleep 0.1; done
            port=$(sed -n 's/.*listening on .*:\\([0-9]*\\)$/\\1/p' \(err) | head -1)
            echo hello | \(cat) -v --ca \(certs)/ca.pem localhost "$port"
            status=$?
            [ $status -eq 0 ] || kill $listener 2>/dev/null
            wait $listener
            echo "port=$port" >&2
            exit $status
            """
        let run = try CLIProcess(["-m", "/bin/sh", "-c", script], tool: "/usr/bin/unshare")
        defer { run.terminate() }
        #expect(run.wait(timeout: 60) == 0, "\(run.errorOutput)")
        #expect((try? String(contentsOfFile: out, encoding: .utf8)) == "hello\n")
        let port = run.errorOutput.split(separator: "\n").first { $0.hasPrefix("port=") }?.dropFirst(5) ?? ""
        let expected = listenHost == "::1" ? "[::1]:\(port)" : "127.0.0.1:\(port)"
        #expect(run.errorOutput.contains("connected to \(expected)"), "\(run.errorOutput)")
    }
}
