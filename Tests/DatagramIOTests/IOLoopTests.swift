import DatagramIO
import NIOConcurrencyHelpers
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A callback that records when it fired or was cancelled.
struct RecordingCallback: NIOScheduledCallbackHandler, Sendable {
    let log: NIOLockedValueBox<[String]>
    let name: String
    func handleScheduledCallback(eventLoop: some EventLoop) { log.withLockedValue { $0.append(name) } }
    func didCancelScheduledCallback(eventLoop: some EventLoop) { log.withLockedValue { $0.append("cancelled \(name)") } }
}

@Suite("DatagramIO: the event loop")
struct IOLoopTests {
    static let loop = try! IOLoop(name: "test-loop")

    @Test("tasks run in the order they were queued, from the loop and from another thread")
    func executeOrder() async throws {
        let loop = Self.loop
        let log = NIOLockedValueBox<[Int]>([])
        for index in 0..<1000 { loop.execute { log.withLockedValue { $0.append(index) } } }
        try await loop.submit {
            // Queued on the loop: after everything already queued, in order.
            for index in 1000..<2000 { loop.execute { log.withLockedValue { $0.append(index) } } }
        }.get()
        try await loop.submit {}.get()
        #expect(log.withLockedValue { $0 } == Array(0..<2000))
    }

    @Test("inEventLoop is true on the loop's thread only")
    func inEventLoop() async throws {
        #expect(!Self.loop.inEventLoop)
        #expect(try await Self.loop.submit { Self.loop.inEventLoop }.get())
    }

    @Test("scheduled tasks run in deadline order, a cancelled one never, and its future fails with cancelled")
    func scheduledOrder() async throws {
        let loop = Self.loop
        let log = NIOLockedValueBox<[String]>([])
        let now = NIODeadline.now()
        let late = loop.scheduleTask(deadline: now + .milliseconds(30)) { log.withLockedValue { $0.append("30") } }
        let early = loop.scheduleTask(deadline: now + .milliseconds(10)) { log.withLockedValue { $0.append("10") } }
        let cancelled = loop.scheduleTask(deadline: now + .milliseconds(20)) { log.withLockedValue { $0.append("20") } }
        let callback = try loop.scheduleCallback(at: now + .milliseconds(15), handler: RecordingCallback(log: log, name: "cb15"))
        let dropped = try loop.scheduleCallback(at: now + .milliseconds(25), handler: RecordingCallback(log: log, name: "cb25"))
        _ = callback
        cancelled.cancel()
        dropped.cancel()
        try await late.futureResult.get()
        try await early.futureResult.get()
        await #expect(throws: EventLoopError.cancelled) { try await cancelled.futureResult.get() }
        try await loop.submit {}.get()
        #expect(log.withLockedValue { $0 } == ["cancelled cb25", "10", "cb15", "30"])
    }

    @Test("a 2 ms timer on an idle loop fires after 2 ms and well before 20 (nanosecond waits)")
    func timerPrecision() async throws {
        let loop = Self.loop
        var lateness: [Int64] = []
        for _ in 0..<20 {
            let deadline = NIODeadline.now() + .milliseconds(2)
            let fired = try await loop.scheduleTask(deadline: deadline) { NIODeadline.now() }.futureResult.get()
            #expect(fired >= deadline)
            lateness.append((fired - deadline).nanoseconds)
        }
        lateness.sort()
        // The median: a busy shared machine may delay a few wakeups.
        #expect(lateness[lateness.count / 2] < 5_000_000)
    }

    @Test("a task from another thread wakes a loop that sleeps with no timer")
    func wakeup() async throws {
        let loop = try IOLoop(name: "test-wake")
        try await Task.sleep(for: .milliseconds(20))
        let started = NIODeadline.now()
        let ran = try await loop.submit { NIODeadline.now() }.get()
        #expect(ran - started < .milliseconds(500))
        try await loop.shutdownGracefully()
    }

    @Test("shutting down fails timers still pending with shutdown, and runs tasks already queued")
    func shutdown() async throws {
        let loop = try IOLoop(name: "test-shutdown")
        let pending = loop.scheduleTask(in: .seconds(60)) {}
        // Registered before the shutdown: a closed loop takes no more work, not even a callback.
        let outcome = NIOLockedValueBox<Result<Void, Error>?>(nil)
        pending.futureResult.whenComplete { result in outcome.withLockedValue { $0 = result } }
        let ran = NIOLockedValueBox(false)
        loop.execute { ran.withLockedValue { $0 = true } }
        try await loop.shutdownGracefully()
        #expect(ran.withLockedValue { $0 })
        let failure = try #require(outcome.withLockedValue { $0 })
        #expect(throws: EventLoopError.shutdown) { try failure.get() }
        // Work queued after the shutdown is dropped, not run.
        let late = NIOLockedValueBox(false)
        loop.execute { late.withLockedValue { $0 = true } }
        try await Task.sleep(for: .milliseconds(20))
        #expect(!late.withLockedValue { $0 })
    }

    @Test("a Swift task on the loop's executor runs on the loop")
    func serialExecutor() async throws {
        let loop = Self.loop
        actor OnLoop {
            let executor: any SerialExecutor
            nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
            init(_ executor: any SerialExecutor) { self.executor = executor }
            func check(_ loop: IOLoop) -> Bool { loop.inEventLoop }
        }
        #expect(await OnLoop(loop.executor).check(loop))
    }

    /// Jobs queued as jobs, no closure each: the path EventLoopTaskExecutor takes on an IOLoop.
    final class JobExecutor: TaskExecutor {
        let loop: IOLoop
        init(_ loop: IOLoop) { self.loop = loop }
        func enqueue(_ job: consuming ExecutorJob) { loop.enqueue(UnownedJob(job), on: asUnownedTaskExecutor()) }
    }

    @Test("a task preferring a task executor on the loop runs there, before and after suspending")
    func taskExecutorJobs() async throws {
        let loop = Self.loop
        let executor = JobExecutor(loop)
        let onLoop = await withTaskExecutorPreference(executor) { () async -> [Bool] in
            var seen = [loop.inEventLoop]
            for _ in 0..<100 {
                // A future completed on the loop: the task resumes there through a job.
                try? await loop.submit {}.get()
                seen.append(loop.inEventLoop)
            }
            return seen
        }
        #expect(onLoop.count == 101 && onLoop.allSatisfy { $0 })
    }
}
