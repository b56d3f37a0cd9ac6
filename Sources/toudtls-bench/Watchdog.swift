import Foundation

/// Bounds every wait of a client run without wrapping each await: connections report progress, and
/// if none arrives for `stallSeconds` while armed, `onStall` runs with a description of the stuck phase
/// (it ends the process). A dispatch timer checks, so it fires even if Swift's task pool is starved.
final class Watchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var lastProgress = nowNanos()
    private var phase = "starting"
    private var armed = true
    private var fired = false
    private let stallNanos: UInt64
    private let timer: DispatchSourceTimer
    private let status: @Sendable () -> String
    private let onStall: @Sendable (String) -> Void

    init(stallSeconds: Double, status: @escaping @Sendable () -> String,
         onStall: @escaping @Sendable (String) -> Void) {
        self.stallNanos = UInt64(max(stallSeconds, 0.1) * 1e9)
        self.status = status
        self.onStall = onStall
        self.timer = DispatchSource.makeTimerSource(queue: DispatchQueue.global())
        timer.schedule(deadline: .now() + 0.25, repeating: 0.25)
        timer.setEventHandler { [weak self] in self?.check() }
        timer.resume()
    }

    deinit { timer.cancel() }

    func progress(at now: UInt64 = nowNanos()) {
        lock.lock()
        lastProgress = now
        lock.unlock()
    }

    /// Enters a phase; `armed` false for phases that wait on purpose (holding idle connections).
    func enter(_ phase: String, armed: Bool = true) {
        lock.lock()
        self.phase = phase
        self.armed = armed
        lastProgress = nowNanos()
        lock.unlock()
    }

    func stop() {
        timer.cancel()
    }

    private func check() {
        let now = nowNanos()
        lock.lock()
        let stalled = armed && !fired && now > lastProgress && now - lastProgress > stallNanos
        if stalled { fired = true }
        let phase = self.phase
        lock.unlock()
        guard stalled else { return }
        let message = "stalled: no progress for \(Double(stallNanos) / 1e9) s while \(phase) (\(status()))"
        onStall(message)
    }
}

/// Counters shared by the concurrent connections of a run, for progress and stall reports.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: Int] = [:]
    private var order: [String] = []

    func add(_ key: String, _ amount: Int = 1) {
        lock.lock()
        if values[key] == nil { order.append(key) }
        values[key, default: 0] += amount
        lock.unlock()
    }

    subscript(key: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return values[key] ?? 0
    }

    var summary: String {
        lock.lock()
        defer { lock.unlock() }
        return order.map { "\($0) \(values[$0] ?? 0)" }.joined(separator: ", ")
    }
}

/// A counting semaphore for async code: bounds how many handshakes are in flight at once.
actor ConnectGate {
    private var permits: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(permits: Int) { self.permits = max(permits, 1) }

    func acquire() async {
        if permits > 0 {
            permits -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty {
            permits += 1
        } else {
            waiters.removeFirst().resume()
        }
    }
}
