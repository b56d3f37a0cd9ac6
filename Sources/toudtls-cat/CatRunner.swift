import CommandLineSupport
import FoundationEssentials
import NIOCore
import TOUDTLS

/// Runs one toudtls-cat invocation and returns its exit code.
struct CatRunner: Sendable {
    let command: CatCommand
    let streams = StandardStreams()

    func run() async -> ExitCode32 {
        if command.tcpService != nil || command.tcpListenAddress != nil {
            return await TunnelRunner(command: command).run()
        }
        do {
            if command.listen {
                try await runListener()
            } else {
                try await runClient()
            }
            return .success
        } catch {
            CommandLineTool.printToStandardError("toudtls-cat: \(describe(error))")
            return exitCode(for: error)
        }
    }

    private func describe(_ error: Error) -> String {
        if let error = error as? TOUError, case .untrustedCertificate = error, command.caFile == nil, !command.listen {
            return error.description + " (checked against the system trust store; --ca FILE trusts another CA)"
        }
        if let error = error as? TOUError { return error.description }
        return "\(error)"
    }

    private func verbose(_ message: @autoclosure () -> String) {
        if command.verbose { CommandLineTool.printToStandardError("toudtls-cat: \(message())") }
    }

    // MARK: Client

    private func runClient() async throws {
        let host = command.host ?? "localhost"
        let configuration = command.makeConfiguration()
        let serverName = configuration.serverName(connectingTo: host)
        if let path = command.sessionFile, let saved = SessionFile.load(path, serverName: serverName, warn: warn) {
            configuration.sessionCache?.insert(saved, port: command.port)
        }
        // What stdin already holds goes first: as much of it as fits rides on the TCP SYN.
        let first = await streams.readAvailableNow(maximum: 64 << 10)
        let connection = try await TOUConnection.connect(host: host, port: command.port, configuration: configuration,
                                                         initialData: first)
        if let path = command.sessionFile {
            if let refusal = connection.resumptionRefusal { warn("not resuming the session in \(path): \(refusal)") }
            if let fresh = connection.resumableSession { SessionFile.save(fresh, to: path, warn: warn) }
        }
        verbose("connected to \(connection.remoteAddress.ipAndPort)"
                + (connection.cipherSuite.map { " with \($0)" } ?? " in plain mode")
                + (connection.cipherSuite == nil ? "" : connection.isResumed ? ", session resumed" : ", full handshake")
                + (connection.peerCertificateSubject.map { ", peer \($0)" } ?? ""))
        try await serve(connection, sendStandardInput: true)
    }

    /// Problems that do not stop the transfer (an unusable session file) are said, never fatal.
    private func warn(_ message: String) {
        CommandLineTool.printToStandardError("toudtls-cat: warning: \(message)")
    }

    // MARK: Listener

    private func runListener() async throws {
        let listener = try await TOUListener.bind(host: command.host, port: command.port,
                                                  configuration: command.makeConfiguration(), workers: command.workers ?? TOUListener.defaultWorkers)
        let address = listener.localAddress
        if command.verbose {
            CommandLineTool.printToStandardError("listening on \(address.ipAndPort)")
        }
        if command.keepOpen {
            try await serveForever(listener)
        } else {
            for await connection in listener.connections {
                verbose("connection from \(connection.remoteAddress.ipAndPort)"
                        + (connection.peerCertificateSubject.map { ", peer \($0)" } ?? ""))
                // One connection only: stop admitting others while this one is served.
                let closing = Task { try? await listener.close() }
                try await serve(connection, sendStandardInput: true)
                await closing.value
                if command.verbose { CommandLineTool.printToStandardError("toudtls-cat: \(await listener.counters)") }
                return
            }
            throw TOUError.closed
        }
    }

    /// -k: every connection's bytes go to stdout; stdin is broadcast to the connections open when it is read.
    private func serveForever(_ listener: TOUListener) async throws {
        let hub = BroadcastHub()
        let stdinPump = Task {
            while let chunk = try await streams.read() {
                await hub.broadcast(chunk)
            }
            await hub.finish()
        }
        defer { stdinPump.cancel() }
        await withTaskGroup(of: Void.self) { group in
            for await connection in listener.connections {
                verbose("connection from \(connection.remoteAddress.ipAndPort)")
                group.addTask {
                    await hub.add(connection)
                    do {
                        try await receive(connection)
                        await hub.remove(connection)
                        try await connection.close()
                    } catch {
                        await hub.remove(connection)
                        CommandLineTool.printToStandardError("toudtls-cat: \(describe(error))")
                    }
                }
            }
        }
    }

    // MARK: Both

    /// stdin -> peer (FIN at EOF), peer -> stdout; returns once both directions are finished and
    /// the session has closed.
    private func serve(_ connection: TOUConnection, sendStandardInput: Bool) async throws {
        // Not a task group: a blocking stdin read cannot be cancelled, and a failed connection
        // must not wait for the next line of input before we exit. Both directions run on the
        // connection's loop: its reads and writes then complete without a hop to another thread.
        let sender = Task(executorPreference: connection.taskExecutor) {
            if sendStandardInput {
                while let chunk = try await streams.read() {
                    try await connection.write(chunk)
                }
            }
            try await connection.finishWriting()
        }
        let report = TransferReport(connection: connection)
        let progress = command.verbose ? report.progressWhileTerminal() : nil
        do {
            try await withTaskExecutorPreference(connection.taskExecutor) { try await receive(connection) }
            try await senderOrFailure(sender, connection)
            try await connection.close()
            // The process exits next: the closing rules' close_notify must be on the wire by then.
            try await connection.waitUntilEnded()
        } catch {
            sender.cancel()
            progress?.cancel()
            await connection.abort()
            await finalReport(report, outcome: "\(error)")
            throw error
        }
        progress?.cancel()
        if command.verbose {
            CommandLineTool.printToStandardError("toudtls-cat: \(await connection.stats)")
            if !command.listen {
                CommandLineTool.printToStandardError("toudtls-cat: \(await connection.endpointCounters)")
            }
        }
        await finalReport(report, outcome: "ok")
    }

    /// -v: the summary line; --stats-json: the final counters. Failed connections too.
    private func finalReport(_ report: TransferReport, outcome: String) async {
        guard command.verbose || command.statsJSONFile != nil else { return }
        let stats = await report.connection.stats
        if command.verbose { CommandLineTool.printToStandardError(report.summary(stats)) }
        if let path = command.statsJSONFile {
            let endpoint = await report.connection.endpointCounters
            TransferReport.write(report.json(stats, endpoint: endpoint, outcome: outcome), to: path)
        }
    }

    /// After the peer's FIN the sender may sit in a stdin read for a long time (a terminal, an
    /// idle pipe): a connection that fails meanwhile (user timeout, reset) ends the wait at once
    /// rather than at the next line of input.
    private func senderOrFailure(_ sender: Task<Void, Error>, _ connection: TOUConnection) async throws {
        let (done, finish) = AsyncThrowingStream<Void, Error>.makeStream()
        Task {
            do { try await sender.value; finish.finish() } catch { finish.finish(throwing: error) }
        }
        let watch = Task {
            do { try await connection.waitUntilEnded() } catch { finish.finish(throwing: error) }
        }
        defer { watch.cancel() }
        for try await _ in done {}
    }

    private func receive(_ connection: TOUConnection) async throws {
        for try await chunk in connection.inbound {
            try await streams.write(chunk)
        }
    }
}

/// Fans stdin out to every open connection (ncat -k semantics).
actor BroadcastHub {
    private var connections: [ObjectIdentifier: TOUConnection] = [:]
    private var finished = false

    func add(_ connection: TOUConnection) async {
        if finished {
            try? await connection.finishWriting()
        } else {
            connections[ObjectIdentifier(connection)] = connection
        }
    }

    func remove(_ connection: TOUConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    func broadcast(_ chunk: ByteBuffer) async {
        for connection in connections.values {
            do {
                try await connection.write(chunk)
            } catch {
                connections[ObjectIdentifier(connection)] = nil
            }
        }
    }

    func finish() async {
        finished = true
        for connection in connections.values {
            try? await connection.finishWriting()
        }
    }
}
