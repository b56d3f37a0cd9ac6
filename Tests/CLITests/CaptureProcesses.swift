import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` (which starts a child process) with no signal blocked on this thread.
///
/// Tests run on dispatch worker threads, which block nearly every signal, and Foundation's Process
/// passes the spawning thread's mask on to the child: such a tcpdump or toudtls-cat ignores SIGINT
/// and SIGTERM. Spawning from an unblocked mask gives the child what a shell would.
func withDefaultSignalMask<T>(_ body: () throws -> T) rethrows -> T {
    var empty = sigset_t()
    var saved = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, &saved)
    defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
    return try body()
}

/// Starts toudtls-cat the way a shell would (see `withDefaultSignalMask`).
func startCat(_ arguments: [String], stdin: URL? = nil) throws -> CLIProcess {
    try withDefaultSignalMask { try CLIProcess(arguments, stdin: stdin) }
}

/// Waits for exit like `CLIProcess.wait`, but a process still running at the deadline gets SIGKILL,
/// which no signal mask can hold off, so a hung child never hangs the test run.
@discardableResult
func finish(_ cat: CLIProcess, timeout: TimeInterval) -> Int32 {
    let deadline = Date().addingTimeInterval(timeout)
    while cat.process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
    if cat.process.isRunning { kill(cat.process.processIdentifier, SIGKILL) }
    return cat.wait(timeout: 10)
}

/// Reads the listener's port from its `-v` output, whatever the address family looks like.
func listenerPort(of cat: CLIProcess) -> UInt16? {
    cat.listeningPort.flatMap { UInt16(exactly: $0) }
}
