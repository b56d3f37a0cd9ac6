import CDatagramIO
import Dispatch
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Told by an `IOLoop` when a registered descriptor is ready. Called on the loop.
public protocol IOReadinessHandler: AnyObject {
    /// Readable, or an error is pending (EPOLLERR/EPOLLHUP are reported here too).
    func readable()
    func writable()
}

/// An event loop on a thread of its own: epoll for readiness, an eventfd to be woken by other
/// threads, a heap of timers waited for with nanosecond precision (epoll_pwait2).
///
/// It is a NIO `EventLoop`, so promises, futures, `scheduleTask`/`scheduleCallback` and anything
/// built on `execute` (a Swift `TaskExecutor` or `SerialExecutor`) run on it unchanged. Tasks
/// queued from the loop itself take no lock and cause no wakeup; those from other threads take a
/// lock and write the eventfd only when the loop sleeps.
public final class IOLoop: EventLoop, @unchecked Sendable {
    private enum State { case open, closing, closed }

    private struct Shared {
        var tasks: [Work] = []
        /// The loop is in (or about to enter) epoll_wait with nothing queued: a task needs a wakeup.
        var sleeping = false
        var state = State.open
        var shutdownCallbacks: [(DispatchQueueLike, @Sendable (Error?) -> Void)] = []
        /// Timer IDs handed out off the loop (above 2^63, so they never meet the heap's own).
        var nextRemoteTimerID: UInt64 = 1 << 63
    }

    /// What a timer does when it fires or is cancelled.
    private enum TimerAction {
        case task(run: () -> Void, cancelled: (Error) -> Void)
        case callback(any NIOScheduledCallbackHandler)
    }

    /// A queued task: a closure, or a Swift job to run on a task executor (no closure to allocate).
    private enum Work: @unchecked Sendable {
        case closure(() -> Void)
        case job(UnownedJob, UnownedTaskExecutor)

        func run() {
            switch self {
            case .closure(let body): body()
            case .job(let job, let executor): job.runSynchronously(on: executor)
            }
        }
    }

    private let shared = NIOLockedValueBox(Shared())
    private let epollFD: CInt
    private let wakeFD: CInt
    private static let wakeToken = UInt64.max
    private var threadID = pthread_t()
    public let name: String

    // Touched on the loop's thread only, for every task and readiness event; no access to them
    // spans running a task or a handler, so the runtime's access checks are left out.
    @exclusivity(unchecked) private var localTasks: [Work] = []
    @exclusivity(unchecked) private var runningTasks: [Work] = []
    @exclusivity(unchecked) private var remoteBatch: [Work] = []
    @exclusivity(unchecked) private var timers = TimerHeap<TimerAction>()
    @exclusivity(unchecked) private var handlers: [CInt: IOReadinessHandler] = [:]
    @exclusivity(unchecked) private var eventData = [UInt64](repeating: 0, count: 64)
    @exclusivity(unchecked) private var eventFlags = [UInt32](repeating: 0, count: 64)

    /// Starts the loop's thread; returns once it runs.
    public init(name: String = "DatagramIO") throws {
        self.name = name
        let epollFD = dio_epoll_create()
        guard epollFD >= 0 else { throw IOError(errnoCode: errno, reason: "epoll_create1") }
        let wakeFD = dio_eventfd()
        guard wakeFD >= 0 else {
            let code = errno
            Glibc.close(epollFD)
            throw IOError(errnoCode: code, reason: "eventfd")
        }
        guard dio_epoll_ctl(epollFD, CInt(DIO_EPOLL_CTL_ADD), wakeFD, UInt32(DIO_EPOLLIN), Self.wakeToken) == 0 else {
            let code = errno
            Glibc.close(epollFD)
            Glibc.close(wakeFD)
            throw IOError(errnoCode: code, reason: "epoll_ctl")
        }
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        let started = ConditionLock(value: false)
        let start = ThreadStart(loop: self, started: started)
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue()
            start.loop.threadID = pthread_self()
            start.loop.name.withCString { dio_set_thread_name($0) }
            start.started.lock()
            start.started.unlock(withValue: true)
            start.loop.run()
            return nil
        }, Unmanaged.passRetained(start).toOpaque())
        guard result == 0 else {
            Unmanaged.passUnretained(start).release()
            Glibc.close(epollFD)
            Glibc.close(wakeFD)
            throw IOError(errnoCode: result, reason: "pthread_create")
        }
        pthread_detach(thread)
        // `threadID` is written before this returns: every reader after it sees the value.
        started.lock(whenValue: true)
        started.unlock()
    }

    private final class ThreadStart {
        let loop: IOLoop
        let started: ConditionLock<Bool>
        init(loop: IOLoop, started: ConditionLock<Bool>) {
            self.loop = loop
            self.started = started
        }
    }

    // MARK: EventLoop

    public var inEventLoop: Bool { pthread_equal(pthread_self(), threadID) != 0 }

    public func execute(_ task: @escaping @Sendable () -> Void) {
        enqueue(.closure(task))
    }

    /// Runs `job` on the loop as a job of `executor` (a task executor whose jobs run here): what
    /// `execute { job.runSynchronously(on: executor) }` does, without a closure per job.
    public func enqueue(_ job: UnownedJob, on executor: UnownedTaskExecutor) {
        enqueue(.job(job, executor))
    }

    private func enqueue(_ work: Work) {
        if inEventLoop {
            localTasks.append(work)
            return
        }
        let wake = shared.withLockedValue { shared -> Bool in
            // A shut-down loop runs nothing more, as NIO's loops refuse work then.
            guard shared.state != .closed else { return false }
            shared.tasks.append(work)
            let wake = shared.sleeping
            shared.sleeping = false
            return wake
        }
        if wake { wakeUp() }
    }

    /// `execute` for a closure that need not be Sendable, queued from the loop itself.
    public func _executeIsolatedUnsafeUnchecked(_ task: @escaping () -> Void) {
        precondition(inEventLoop, "_executeIsolatedUnsafeUnchecked off the loop")
        localTasks.append(.closure(task))
    }

    private func wakeUp() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(wakeFD, $0.baseAddress, 8) }
    }

    @discardableResult
    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        // The promise is completed on the loop, where its value is consumed.
        let transfer = UnsafeTransfer(promise)
        let action = TimerAction.task(run: {
            let promise = transfer.wrappedValue.assumeIsolatedUnsafeUnchecked()
            do { promise.succeed(try task()) } catch { transfer.wrappedValue.fail(error) }
        }, cancelled: { transfer.wrappedValue.fail($0) })
        let id = addTimer(at: deadline, UnsafeTransfer(action))
        return Scheduled(promise: promise) { [self] in cancelTimer(id, error: EventLoopError.cancelled) }
    }

    @discardableResult
    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    @discardableResult
    public func scheduleCallback(at deadline: NIODeadline,
                                 handler: some (NIOScheduledCallbackHandler & Sendable)) throws -> NIOScheduledCallback {
        let id = addTimer(at: deadline, UnsafeTransfer(TimerAction.callback(handler)))
        return NIOScheduledCallback(self, id: id)
    }

    @discardableResult
    public func _scheduleCallbackIsolatedUnsafeUnchecked(at deadline: NIODeadline,
                                                         handler: some NIOScheduledCallbackHandler) throws -> NIOScheduledCallback {
        precondition(inEventLoop, "_scheduleCallbackIsolatedUnsafeUnchecked off the loop")
        let id = timers.insert(deadline: deadline.uptimeNanoseconds, .callback(handler))
        return NIOScheduledCallback(self, id: id)
    }

    public func cancelScheduledCallback(_ scheduledCallback: NIOScheduledCallback) {
        guard let id = scheduledCallback.customCallbackID else { return }
        cancelTimer(id, error: EventLoopError.cancelled)
    }

    /// On the loop: straight into the heap. Elsewhere: an ID now, the heap on the loop's next turn.
    private func addTimer(at deadline: NIODeadline, _ action: UnsafeTransfer<TimerAction>) -> UInt64 {
        if inEventLoop { return timers.insert(deadline: deadline.uptimeNanoseconds, action.wrappedValue) }
        let id = shared.withLockedValue { shared -> UInt64 in
            defer { shared.nextRemoteTimerID += 1 }
            return shared.nextRemoteTimerID
        }
        execute { [self] in timers.insert(deadline: deadline.uptimeNanoseconds, id: id, action.wrappedValue) }
        return id
    }

    private func cancelTimer(_ id: UInt64, error: Error) {
        guard inEventLoop else {
            execute { [self] in cancelTimer(id, error: error) }
            return
        }
        guard let action = timers.cancel(id) else { return }
        switch action {
        case .task(_, let cancelled): cancelled(error)
        case .callback(let handler): handler.didCancelScheduledCallback(eventLoop: self)
        }
    }

    public func preconditionInEventLoop(file: StaticString, line: UInt) {
        precondition(inEventLoop, "not on \(name)", file: file, line: line)
    }

    public func preconditionNotInEventLoop(file: StaticString, line: UInt) {
        precondition(!inEventLoop, "on \(name)", file: file, line: line)
    }

    /// Runs the tasks already queued, cancels the timers (their promises fail with
    /// `EventLoopError.shutdown`), closes the loop's descriptors, then calls `callback` on `queue`.
    /// Sockets still registered are the owner's to close first.
    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let alreadyClosed = shared.withLockedValue { shared -> Bool in
            guard shared.state != .closed else { return true }
            shared.state = .closing
            shared.shutdownCallbacks.append((DispatchQueueLike(queue), callback))
            shared.sleeping = false
            return false
        }
        if alreadyClosed {
            queue.async { callback(EventLoopError.shutdown) }
        } else {
            wakeUp()
        }
    }

    public func makeIterator() -> EventLoopIterator { EventLoopIterator([self]) }

    // MARK: Readiness

    /// Watches `fd` for input (always) and output (while `writable`). On the loop only.
    public func register(_ fd: CInt, handler: IOReadinessHandler, writable: Bool = false) throws {
        preconditionInEventLoop(file: #fileID, line: #line)
        guard dio_epoll_ctl(epollFD, CInt(DIO_EPOLL_CTL_ADD), fd, Self.interest(writable: writable), UInt64(fd)) == 0 else {
            throw IOError(errnoCode: errno, reason: "epoll_ctl(ADD)")
        }
        handlers[fd] = handler
    }

    public func setInterest(_ fd: CInt, writable: Bool) {
        preconditionInEventLoop(file: #fileID, line: #line)
        _ = dio_epoll_ctl(epollFD, CInt(DIO_EPOLL_CTL_MOD), fd, Self.interest(writable: writable), UInt64(fd))
    }

    public func deregister(_ fd: CInt) {
        preconditionInEventLoop(file: #fileID, line: #line)
        _ = dio_epoll_ctl(epollFD, CInt(DIO_EPOLL_CTL_DEL), fd, 0, 0)
        handlers[fd] = nil
    }

    private static func interest(writable: Bool) -> UInt32 {
        UInt32(DIO_EPOLLIN) | (writable ? UInt32(DIO_EPOLLOUT) : 0)
    }

    // MARK: The loop

    private func run() {
        while true {
            runDueTimers()
            let closing = runTasks()
            if closing {
                shutDown()
                return
            }
            var timeout: Int64 = 0
            var sleep = false
            if localTasks.isEmpty {
                let earliest = timers.earliest()
                sleep = shared.withLockedValue { shared -> Bool in
                    guard shared.tasks.isEmpty, shared.state == .open else { return false }
                    shared.sleeping = true
                    return true
                }
                if sleep {
                    if let earliest {
                        let now = NIODeadline.now().uptimeNanoseconds
                        timeout = earliest > now ? Int64(earliest - now) : 0
                    } else {
                        timeout = -1
                    }
                }
            }
            let count = dio_epoll_wait(epollFD, &eventData, &eventFlags, CInt(eventData.count), timeout)
            if sleep { shared.withLockedValue { $0.sleeping = false } }
            guard count > 0 else { continue }
            for index in 0..<Int(count) {
                let data = eventData[index]
                if data == Self.wakeToken {
                    var value: UInt64 = 0
                    _ = withUnsafeMutableBytes(of: &value) { read(wakeFD, $0.baseAddress, 8) }
                    continue
                }
                let flags = eventFlags[index]
                // A handler may close another's descriptor while this batch is handled.
                guard let handler = handlers[CInt(truncatingIfNeeded: data)] else { continue }
                if flags & UInt32(DIO_EPOLLOUT) != 0 { handler.writable() }
                if flags & UInt32(DIO_EPOLLIN | DIO_EPOLLERR | DIO_EPOLLHUP) != 0,
                   handlers[CInt(truncatingIfNeeded: data)] === handler {
                    handler.readable()
                }
            }
        }
    }

    private func runDueTimers() {
        guard !timers.isEmpty else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        while let action = timers.popDue(now: now) {
            switch action {
            case .task(let run, _): run()
            case .callback(let handler): handler.handleScheduledCallback(eventLoop: self)
            }
        }
    }

    /// Runs the tasks queued from other threads, then those queued here, and those these queue,
    /// up to `tasksPerTurn`: a task that queues another (a read resuming a Swift task that writes,
    /// whose flush is queued in turn) then costs no extra epoll call, as in SwiftNIO's loop.
    /// True once the loop is to shut down.
    private func runTasks() -> Bool {
        let closing = shared.withLockedValue { shared -> Bool in
            if !shared.tasks.isEmpty { swap(&shared.tasks, &remoteBatch) }
            return shared.state == .closing
        }
        var budget = Self.tasksPerTurn
        if !remoteBatch.isEmpty {
            budget -= remoteBatch.count
            for work in remoteBatch { work.run() }
            remoteBatch.removeAll(keepingCapacity: true)
        }
        while !localTasks.isEmpty, budget > 0 {
            swap(&localTasks, &runningTasks)
            budget -= runningTasks.count
            for work in runningTasks { work.run() }
            runningTasks.removeAll(keepingCapacity: true)
        }
        return closing && localTasks.isEmpty
    }

    /// Tasks run between two looks at I/O, at most (more when one round holds more).
    private static let tasksPerTurn = 4096

    private func shutDown() {
        // Work queued until the state says closed still runs; then nothing more is taken.
        while true {
            let tasks = shared.withLockedValue { shared -> [Work] in
                let tasks = shared.tasks
                shared.tasks = []
                if tasks.isEmpty { shared.state = .closed }
                return tasks
            }
            guard !tasks.isEmpty || !localTasks.isEmpty else { break }
            for work in tasks { work.run() }
            while !localTasks.isEmpty {
                swap(&localTasks, &runningTasks)
                for work in runningTasks { work.run() }
                runningTasks.removeAll()
            }
        }
        for action in timers.removeAll() {
            switch action {
            case .task(_, let cancelled): cancelled(EventLoopError.shutdown)
            case .callback(let handler): handler.didCancelScheduledCallback(eventLoop: self)
            }
        }
        // Futures completed by the cancellations above ran their callbacks here.
        while !localTasks.isEmpty {
            swap(&localTasks, &runningTasks)
            for work in runningTasks { work.run() }
            runningTasks.removeAll()
        }
        Glibc.close(epollFD)
        Glibc.close(wakeFD)
        let callbacks = shared.withLockedValue { $0.shutdownCallbacks }
        for (queue, callback) in callbacks { queue.queue.async { callback(nil) } }
    }
}

/// A DispatchQueue carried in the lock-protected state.
private struct DispatchQueueLike: @unchecked Sendable {
    let queue: DispatchQueue
    init(_ queue: DispatchQueue) { self.queue = queue }
}

/// Carries a value the loop alone touches across a Sendable boundary.
private struct UnsafeTransfer<Value>: @unchecked Sendable {
    let wrappedValue: Value
    init(_ value: Value) { wrappedValue = value }
}

/// `count` IOLoops, handed out in turn by `next()`.
public final class IOLoopGroup: EventLoopGroup, Sendable {
    public let loops: [IOLoop]
    private let index = NIOLockedValueBox(0)

    public init(loopCount: Int, name: String = "DatagramIO") throws {
        precondition(loopCount > 0)
        loops = try (0..<loopCount).map { try IOLoop(name: "\(name)-\($0)") }
    }

    /// One loop per core, for the life of the process (it is never shut down).
    public static let singleton: IOLoopGroup = {
        do {
            return try IOLoopGroup(loopCount: System.coreCount)
        } catch {
            fatalError("cannot start the datagram I/O threads: \(error)")
        }
    }()

    public func next() -> EventLoop { nextLoop() }

    public func nextLoop() -> IOLoop {
        let position = index.withLockedValue { index -> Int in
            defer { index = (index + 1) % loops.count }
            return index
        }
        return loops[position]
    }

    public func any() -> EventLoop {
        loops.first { $0.inEventLoop } ?? nextLoop()
    }

    public func makeIterator() -> EventLoopIterator { EventLoopIterator(loops) }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let remaining = NIOLockedValueBox((count: loops.count, error: Error?.none))
        for loop in loops {
            loop.shutdownGracefully(queue: queue) { error in
                let done = remaining.withLockedValue { state -> (Bool, Error?) in
                    state.count -= 1
                    if let error, state.error == nil { state.error = error }
                    return (state.count == 0, state.error)
                }
                if done.0 { callback(done.1) }
            }
        }
    }
}
