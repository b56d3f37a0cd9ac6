import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Where a program is on PATH, or nil (the tests that need it are then skipped with a reason).
func programPath(_ name: String) -> String? {
    let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
    return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// toudtls-cat's tunnel mode between real TCP applications: a web server and curl, redis-server
/// and redis-benchmark, and small Python services and clients (tunnel_peers.py) for half-close,
/// resets and connections that cannot be opened.
@Suite("toudtls-cat tunnel mode", .serialized)
struct TunnelTests {
    let certs = CLIProcess.certs
    static let peers = CLIProcess.packageRoot.appendingPathComponent("Tests/CLITests/tunnel_peers.py").path

    /// Both ends of a tunnel: a -l -k listener relaying to `service` and a --tcp-listen client.
    struct Tunnel {
        let server: CLIProcess
        let client: CLIProcess
        let udpPort: Int
        /// Where local TCP clients connect.
        let port: Int

        func stop() {
            client.terminate()
            server.terminate()
            client.wait()
            server.wait()
        }
    }

    func startTunnel(service: Int, serverExtra: [String] = [], clientExtra: [String] = []) throws -> Tunnel {
        let (server, udpPort) = try CLIProcess.readyListener(
            ["-k", "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key",
             "--tcp-connect", "127.0.0.1:\(service)"] + serverExtra + ["127.0.0.1", "0"])
        let client: CLIProcess
        do {
            client = try startClient(udpPort: udpPort, extra: clientExtra)
        } catch {
            server.terminate()
            throw error
        }
        guard let port = client.listeningPort else {
            client.terminate()
            server.terminate()
            throw TunnelTestError("the tunnel client did not say where it listens: \(client.errorOutput)")
        }
        return Tunnel(server: server, client: client, udpPort: udpPort, port: port)
    }

    func startClient(udpPort: Int, extra: [String] = []) throws -> CLIProcess {
        let client = try CLIProcess(["-v", "--ca", "\(certs)/ca.pem", "--server-name", "localhost",
                                     "--tcp-listen", "0"] + extra + ["127.0.0.1", "\(udpPort)"])
        #expect(client.waitForError(containing: "listening on"), "tunnel client: \(client.errorOutput)")
        return client
    }

    /// A Python helper from tunnel_peers.py.
    func python(_ arguments: [String]) throws -> CLIProcess {
        try CLIProcess([Self.peers] + arguments, tool: try #require(programPath("python3")))
    }

    /// Starts a tunnel_peers.py service and returns it with the port it printed.
    func startService(_ mode: String, port: Int? = nil) throws -> (CLIProcess, Int) {
        let service = try python([mode] + (port.map { ["\($0)"] } ?? []))
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let line = service.outputText.split(separator: "\n").first, let port = Int(line) {
                return (service, port)
            }
            if !service.process.isRunning { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        service.terminate()
        throw TunnelTestError("\(mode) did not start: \(service.errorOutput)")
    }

    // MARK: Real applications

    @Test("curl fetches a 20 MB file from python3 -m http.server through the tunnel, three at once, each intact",
          .enabled(if: programPath("python3") != nil && programPath("curl") != nil, "needs python3 and curl"))
    func curlThroughTunnel() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("toudtls-web-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = try makeRandomFile(bytes: 20 << 20)
        try FileManager.default.moveItem(at: file, to: directory.appendingPathComponent("big.bin"))
        let expected = try Data(contentsOf: directory.appendingPathComponent("big.bin"))

        let webPort = try freeTCPPort()
        let web = try CLIProcess(["-m", "http.server", "--bind", "127.0.0.1", "--directory", directory.path, "\(webPort)"],
                                 tool: try #require(programPath("python3")))
        defer { web.terminate(); web.wait() }
        try waitForTCP(port: webPort, process: web)
        let tunnel = try startTunnel(service: webPort)
        defer { tunnel.stop() }

        let curls = try (0..<3).map { index in
            try CLIProcess(["-sS", "--fail", "-o", directory.appendingPathComponent("out\(index).bin").path,
                            "http://127.0.0.1:\(tunnel.port)/big.bin"], tool: try #require(programPath("curl")))
        }
        for (index, curl) in curls.enumerated() {
            #expect(curl.wait(timeout: 180) == 0, "curl \(index): \(curl.errorOutput)")
            let received = try Data(contentsOf: directory.appendingPathComponent("out\(index).bin"))
            #expect(received.count == expected.count, "curl \(index): \(received.count) bytes")
            let intact = received == expected
            #expect(intact, "curl \(index): the file differs from the served one")
        }
        // -v: one open and one close line per connection on each side, all finished cleanly.
        let deadline = Date().addingTimeInterval(10)
        while [tunnel.server, tunnel.client].contains(where: { $0.errorOutput.components(separatedBy: "finished both ways").count < 4 }),
              Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(tunnel.server.errorOutput.components(separatedBy: "finished both ways").count == 4,
                "listener: \(tunnel.server.errorOutput)")
        #expect(tunnel.client.errorOutput.components(separatedBy: "finished both ways").count == 4,
                "tunnel client: \(tunnel.client.errorOutput)")
    }

    @Test("redis-benchmark -c 50 -t set,get through the tunnel: every request answered",
          .enabled(if: programPath("redis-server") != nil && programPath("redis-benchmark") != nil
                       && programPath("redis-cli") != nil,
                   "needs redis-server and redis-tools (Debian: apt-get install redis-server redis-tools)"))
    func redisThroughTunnel() throws {
        let redisPort = try freeTCPPort()
        let redis = try CLIProcess(["--port", "\(redisPort)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                   tool: try #require(programPath("redis-server")))
        defer { redis.terminate(); redis.wait() }
        try waitForTCP(port: redisPort, process: redis)
        let tunnel = try startTunnel(service: redisPort)
        defer { tunnel.stop() }

        let requests = 20_000
        let benchmark = try CLIProcess(["-h", "127.0.0.1", "-p", "\(tunnel.port)", "-c", "50", "-t", "set,get",
                                        "-n", "\(requests)", "--csv"],
                                       tool: try #require(programPath("redis-benchmark")))
        #expect(benchmark.wait(timeout: 300) == 0, "redis-benchmark: \(benchmark.errorOutput)")
        let lines = benchmark.outputText.split(separator: "\n")
        for test in ["SET", "GET"] {
            let line = lines.first { $0.hasPrefix("\"\(test)\"") }
            #expect(line != nil, "no \(test) result: \(benchmark.outputText)")
        }
        print("redis-benchmark through the tunnel (debug build): \(lines.filter { !$0.hasPrefix("\"test\"") })")
        // Every SET and GET reached redis and was answered: redis counted them.
        let info = try CLIProcess(["-p", "\(redisPort)", "info", "commandstats"], tool: try #require(programPath("redis-cli")))
        #expect(info.wait() == 0)
        #expect(calls(of: "set", in: info.outputText) == requests, "\(info.outputText)")
        #expect(calls(of: "get", in: info.outputText) == requests, "\(info.outputText)")
        #expect(!tunnel.server.errorOutput.contains("reset:"), "listener: \(tunnel.server.errorOutput)")
    }

    /// `calls=N` of cmdstat_NAME in redis INFO commandstats.
    func calls(of command: String, in info: String) -> Int? {
        guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_\(command):") }),
              let field = line.split(separator: ":").last?.split(separator: ",").first(where: { $0.hasPrefix("calls=") })
        else { return nil }
        return Int(field.dropFirst("calls=".count))
    }

    // MARK: Half-close and reset

    @Test("half-close: a request ended by shutdown(SHUT_WR) gets its whole answer, and a service that half-closes first still receives the client's data",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func halfClose() throws {
        let (service, servicePort) = try startService("serve-after-eof")
        defer { service.terminate(); service.wait() }
        let tunnel = try startTunnel(service: servicePort)
        defer { tunnel.stop() }
        let client = try python(["half-close", "\(tunnel.port)", "\(300_000)"])
        #expect(client.wait(timeout: 120) == 0, "client: \(client.outputText) \(client.errorOutput)")
        #expect(client.outputText.contains("answer intact"), "client: \(client.outputText)")

        // The other way: the service's FIN arrives first, the client sends afterwards.
        let (banner, bannerPort) = try startService("serve-banner-first")
        defer { banner.terminate(); banner.wait() }
        let second = try startTunnel(service: bannerPort)
        defer { second.stop() }
        let late = try python(["after-banner", "\(second.port)", "\(200_000)"])
        #expect(late.wait(timeout: 120) == 0, "client: \(late.outputText) \(late.errorOutput)")
        let sent = try #require(late.outputText.split(separator: " ").last).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(late.outputText.hasPrefix("banner hello, then FIN"), "client: \(late.outputText)")
        #expect(banner.waitForOutput(containing: "received 200000 \(sent)"), "service: \(banner.outputText)")
    }

    @Test("a reset on either side ends the other with a reset: the TCP client's reaches the service, the service's reaches the TCP client",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func resetCarried() throws {
        let (service, servicePort) = try startService("serve-stream")
        defer { service.terminate(); service.wait() }
        let tunnel = try startTunnel(service: servicePort)
        defer { tunnel.stop() }
        let client = try python(["reset", "\(tunnel.port)"])
        #expect(client.wait(timeout: 60) == 0, "client: \(client.outputText) \(client.errorOutput)")
        #expect(service.waitForOutput(containing: "write failed: ConnectionResetError"), "service: \(service.outputText)")
        // Each end logs a pair's end after both directions have wound down, which may be after the
        // service has seen its reset.
        #expect(tunnel.client.waitForError(containing: "reset: tcp"), "tunnel client: \(tunnel.client.errorOutput)")
        #expect(tunnel.server.waitForError(containing: "reset: tou"), "listener: \(tunnel.server.errorOutput)")

        // The other way: the service resets, the local client sees a reset (not a clean end).
        let (resetting, resettingPort) = try startService("serve-reset")
        defer { resetting.terminate(); resetting.wait() }
        let second = try startTunnel(service: resettingPort)
        defer { second.stop() }
        let probe = try python(["until-closed", "\(second.port)"])
        #expect(probe.wait(timeout: 60) == 0, "probe: \(probe.outputText) \(probe.errorOutput)")
        #expect(probe.outputText.contains("ConnectionResetError"), "probe: \(probe.outputText)")
        #expect(second.server.waitForError(containing: "reset: tcp: connection reset by peer"),
                "listener: \(second.server.errorOutput)")
    }

    @Test("SIGTERM to either end resets its open connections: the local TCP client sees a reset, not a clean end",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func terminationResets() throws {
        let (idle, idlePort) = try startService("serve-idle")
        defer { idle.terminate(); idle.wait() }
        for stopServer in [false, true] {
            let tunnel = try startTunnel(service: idlePort)
            defer { tunnel.stop() }
            // until-closed sends a line and waits for an answer the idle service never gives.
            let probe = try python(["until-closed", "\(tunnel.port)"])
            defer { probe.terminate() }
            #expect(tunnel.server.waitForError(containing: "#1 open"), "listener: \(tunnel.server.errorOutput)")
            let stopped = stopServer ? tunnel.server : tunnel.client
            kill(stopped.process.processIdentifier, SIGTERM)
            #expect(stopped.wait(timeout: 30) == 128 + SIGTERM, "stopped end: \(stopped.errorOutput)")
            #expect(stopped.errorOutput.contains("reset 1 open connection"), "stopped end: \(stopped.errorOutput)")
            #expect(probe.wait(timeout: 60) == 0, "probe: \(probe.outputText) \(probe.errorOutput)")
            #expect(probe.outputText.contains("ConnectionResetError"), "stopServer \(stopServer): \(probe.outputText)")
        }
    }

    // MARK: Backpressure

    /// "blocked after N" from a flood in tunnel_peers.py: N, or nil when it never blocked.
    func bytesBeforeBlocking(_ output: String) -> Int? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("blocked after ") }) else { return nil }
        return Int(line.dropFirst("blocked after ".count))
    }

    @Test("backpressure both ways: a writer whose far reader reads nothing is held back after a bounded amount (the buffers along the way), not absorbed by the tunnel",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func backpressure() throws {
        // The TCP client reads nothing: the service's writes block.
        let (flooding, floodingPort) = try startService("serve-flood")
        defer { flooding.terminate(); flooding.wait() }
        let tunnel = try startTunnel(service: floodingPort)
        defer { tunnel.stop() }
        let holder = try python(["hold", "\(tunnel.port)"])
        defer { holder.terminate(); holder.wait() }
        let deadline = Date().addingTimeInterval(120)
        while bytesBeforeBlocking(flooding.outputText) == nil, !flooding.outputText.contains("never blocked"),
              Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
        }
        // Kernel socket buffers at both ends (a few MB each, autotuned) plus TOU's 4 MB buffers.
        let towardClient = bytesBeforeBlocking(flooding.outputText)
        print("the service was held back after \(towardClient.map(String.init) ?? "?") bytes")
        #expect((towardClient ?? .max) < 128 << 20, "service: \(flooding.outputText)")

        // The service reads nothing: the TCP client's writes block.
        let (idle, idlePort) = try startService("serve-idle")
        defer { idle.terminate(); idle.wait() }
        let second = try startTunnel(service: idlePort)
        defer { second.stop() }
        let writer = try python(["flood", "\(second.port)"])
        #expect(writer.wait(timeout: 120) == 0, "writer: \(writer.errorOutput)")
        let towardService = bytesBeforeBlocking(writer.outputText)
        print("the client was held back after \(towardService.map(String.init) ?? "?") bytes")
        #expect((towardService ?? .max) < 128 << 20, "writer: \(writer.outputText)")
    }

    // MARK: Connections that cannot be opened

    /// The local client's connection is closed promptly (a generous bound: a guard against
    /// hanging, not a timing benchmark).
    func expectClosedPromptly(port: Int) throws {
        let probe = try python(["until-closed", "\(port)"])
        #expect(probe.wait(timeout: 60) == 0, "probe: \(probe.outputText) \(probe.errorOutput)")
        let words = probe.outputText.split(separator: " ")
        let seconds = words.count >= 2 ? Double(words[words.count - 2]) : nil
        print("tunnel closed the local connection: \(probe.outputText.trimmingCharacters(in: .whitespacesAndNewlines))")
        #expect((seconds ?? .infinity) < 5, "probe: \(probe.outputText)")
    }

    @Test("a service that is down: the local client's connection is closed at once, one line is logged, and the tunnel serves the next connection once the service is up",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func serviceDown() throws {
        let servicePort = try freeTCPPort()
        let tunnel = try startTunnel(service: servicePort)
        defer { tunnel.stop() }
        try expectClosedPromptly(port: tunnel.port)
        #expect(tunnel.server.waitForError(containing: "cannot connect to tcp"), "listener: \(tunnel.server.errorOutput)")
        let failures = tunnel.server.errorOutput.split(separator: "\n").filter { $0.contains("cannot connect to tcp") }
        #expect(failures.count == 1, "listener: \(tunnel.server.errorOutput)")
        #expect(failures.first?.contains("connection refused") == true, "listener: \(tunnel.server.errorOutput)")

        let (service, _) = try startService("serve-after-eof", port: servicePort)
        defer { service.terminate(); service.wait() }
        let client = try python(["half-close", "\(tunnel.port)", "\(10_000)"])
        #expect(client.wait(timeout: 60) == 0, "client: \(client.outputText) \(client.errorOutput)")
        #expect(tunnel.server.process.isRunning && tunnel.client.process.isRunning)
    }

    @Test("a listener that refuses the client's certificate: the local connection is closed at once with one line, and the tunnel keeps serving",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func refusedCertificate() throws {
        let (service, servicePort) = try startService("serve-after-eof")
        defer { service.terminate(); service.wait() }
        // The listener wants a client certificate; this tunnel client has none.
        let tunnel = try startTunnel(service: servicePort, serverExtra: ["--ca", "\(certs)/ca.pem", "--require-client-cert"])
        defer { tunnel.stop() }
        try expectClosedPromptly(port: tunnel.port)
        // The tunnel client logs after it has reset the local connection.
        #expect(tunnel.client.waitForError(containing: "cannot open a TOU connection"), "tunnel client: \(tunnel.client.errorOutput)")
        let failures = tunnel.client.errorOutput.split(separator: "\n").filter { $0.contains("cannot open a TOU connection") }
        #expect(failures.count == 1, "tunnel client: \(tunnel.client.errorOutput)")
        #expect(tunnel.server.waitForError(containing: "required client certificate"), "listener: \(tunnel.server.errorOutput)")

        // A client with a certificate gets through the same listener, which is still serving.
        let good = try startClient(udpPort: tunnel.udpPort,
                                   extra: ["--cert", "\(certs)/client.pem", "--key", "\(certs)/client.key"])
        defer { good.terminate(); good.wait() }
        let port = try #require(good.listeningPort)
        let client = try python(["half-close", "\(port)", "\(10_000)"])
        #expect(client.wait(timeout: 60) == 0, "client: \(client.outputText) \(client.errorOutput) \(good.errorOutput)")
        #expect(tunnel.client.process.isRunning, "the refused tunnel client keeps accepting")
    }

    @Test("a listener without -k relays one connection and exits 0; with the service down it exits 4",
          .enabled(if: programPath("python3") != nil, "needs python3"))
    func singleConnection() throws {
        let (service, servicePort) = try startService("serve-after-eof")
        defer { service.terminate(); service.wait() }
        for (target, status) in [(servicePort, Int32(0)), (try freeTCPPort(), Int32(4))] {
            let (server, udpPort) = try CLIProcess.readyListener(
                ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key",
                 "--tcp-connect", "127.0.0.1:\(target)", "127.0.0.1", "0"])
            defer { server.terminate() }
            let client = try startClient(udpPort: udpPort)
            defer { client.terminate(); client.wait() }
            let port = try #require(client.listeningPort)
            let probe = try python(status == 0 ? ["half-close", "\(port)", "1000"] : ["until-closed", "\(port)"])
            #expect(probe.wait(timeout: 60) == 0, "probe: \(probe.outputText) \(probe.errorOutput)")
            #expect(server.wait(timeout: 60) == status, "listener: \(server.errorOutput)")
        }
    }

    // MARK: Usage

    @Test("tunnel options misused exit 2 with one line")
    func usageErrors() throws {
        let server = ["--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key"]
        for arguments in [["--ca", "\(certs)/ca.pem", "--tcp-connect", "127.0.0.1:80", "127.0.0.1", "9"],
                          ["-l", "--tcp-listen", "8080"] + server + ["9"],
                          ["-l", "--tcp-connect", "127.0.0.1"] + server + ["9"],
                          ["-l", "--tcp-connect", "::1:80"] + server + ["9"],
                          ["-l", "--tcp-connect", "127.0.0.1:0"] + server + ["9"],
                          ["--ca", "\(certs)/ca.pem", "--tcp-listen", "127.0.0.1:99999", "127.0.0.1", "9"],
                          ["--ca", "\(certs)/ca.pem", "--tcp-listen", ":80", "127.0.0.1", "9"],
                          ["--ca", "/nonexistent.pem", "--tcp-listen", "0", "127.0.0.1", "9"],
                          ["--ca", "\(certs)/ca.pem", "--cert", "\(certs)/client.pem", "--key", "\(certs)/server.key",
                           "--tcp-listen", "0", "127.0.0.1", "9"]] {
            let process = try CLIProcess(arguments)
            #expect(process.wait(timeout: 30) == 2, "\(arguments): \(process.errorOutput)")
            #expect(process.errorOutput.hasPrefix("toudtls-cat: "), "\(arguments): \(process.errorOutput)")
        }
    }
}

struct TunnelTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for services that need a port number).
func freeTCPPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(descriptor, pointer, length) == 0 && getsockname(descriptor, pointer, &length) == 0
        }
    }
    guard bound else { throw TunnelTestError("cannot find a free TCP port: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
func waitForTCP(port: Int, process: CLIProcess, timeout: TimeInterval = 30) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        close(descriptor)
        if connected { return }
        if !process.process.isRunning { break }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw TunnelTestError("nothing accepts TCP on port \(port): \(process.errorOutput)")
}
