import DequeModule
import NIOCore

/// A session's datagrams waiting to leave, in order, grouped into runs for UDP GSO: a run is one
/// buffer of back-to-back datagrams, all `segmentSize` long but the last, which the kernel cuts
/// back into the same datagrams. Data records are encrypted straight into the open run, so a
/// window of segments costs one buffer and one trip through the socket layer, not one each.
struct OutboundQueue {
    struct Run {
        var datagrams: ByteBuffer
        var segmentSize: Int
        var count: Int
        /// A datagram shorter than `segmentSize` must be the run's last.
        var closed = false

        static func single(_ datagram: ByteBuffer) -> Run {
            Run(datagrams: datagram, segmentSize: datagram.readableBytes, count: 1, closed: true)
        }

        /// Each datagram, in order, as a slice of the run.
        var slices: [ByteBuffer] {
            var rest = datagrams
            var result: [ByteBuffer] = []
            result.reserveCapacity(count)
            while rest.readableBytes > 0, let slice = rest.readSlice(length: min(segmentSize, rest.readableBytes)) {
                result.append(slice)
            }
            return result
        }

        /// Takes the first datagram off the run (a slice, no copy); the rest stay a run.
        mutating func removeFirst() -> ByteBuffer? {
            guard count > 0 else { return nil }
            count -= 1
            // The last datagram may be shorter than the others: it is whatever is left.
            return datagrams.readSlice(length: count == 0 ? datagrams.readableBytes : segmentSize)
        }
    }

    /// Linux's UDP_MAX_SEGMENTS was 64 before 6.x; stay within it everywhere.
    static let maximumSegments = 64
    /// Under the 64 KiB limit of one IP datagram, for IPv4 and IPv6 headers alike.
    static let maximumBytes = 65_000

    private var runs: Deque<Run> = []
    private var open: Run?
    private let allocator = ByteBufferAllocator()

    /// Runs that are full or closed (the open run is not counted).
    var completedRuns: Int { runs.count }

    /// Appends one datagram that `write` appends to the buffer it is given, expected to be `size`
    /// bytes. `write` may append nothing (a failure); whatever it appends becomes one datagram.
    mutating func appendDatagram(size: Int, _ write: (inout ByteBuffer) -> Void) {
        if var run = open, !run.closed, size <= run.segmentSize, run.count < Self.maximumSegments,
           (run.count + 1) * run.segmentSize <= Self.maximumBytes {
            open = nil
            let start = run.datagrams.writerIndex
            defer { settle(&run, start: start) }
            write(&run.datagrams)
            return
        }
        closeOpenRun()
        let segments = max(1, min(Self.maximumSegments, Self.maximumBytes / max(size, 1)))
        var run = Run(datagrams: allocator.buffer(capacity: segments * size), segmentSize: size, count: 0)
        let start = run.datagrams.writerIndex
        defer { settle(&run, start: start) }
        write(&run.datagrams)
    }

    /// Counts what `write` appended to `run` and makes the run open (or queues it if it is done).
    private mutating func settle(_ run: inout Run, start: Int) {
        let written = run.datagrams.writerIndex - start
        if written > 0 {
            if run.count == 0 {
                run.segmentSize = written
            } else if written > run.segmentSize {
                // Longer than its run allows (not expected): it leaves on its own, after the run.
                let datagram = run.datagrams.getSlice(at: start, length: written)
                run.datagrams.moveWriterIndex(to: start)
                run.closed = true
                runs.append(run)
                if let datagram { runs.append(.single(datagram)) }
                return
            }
            run.count += 1
            if written < run.segmentSize { run.closed = true }
        }
        guard run.count > 0 else { return }
        if run.closed || run.count >= Self.maximumSegments
            || (run.count + 1) * run.segmentSize > Self.maximumBytes {
            runs.append(run)
        } else {
            open = run
        }
    }

    /// A ready-made datagram (a handshake flight, an alert, a plain-mode segment): its own run,
    /// after everything queued before it.
    mutating func append(_ datagram: ByteBuffer) {
        closeOpenRun()
        runs.append(.single(datagram))
    }

    /// The next run to send, the open one last.
    mutating func pollRun() -> Run? {
        if let run = runs.popFirst() { return run }
        defer { open = nil }
        return open
    }

    /// The next datagram on its own; the rest of its run stays at the front, still one run.
    mutating func pollDatagram() -> ByteBuffer? {
        guard var run = pollRun() else { return nil }
        let first = run.removeFirst()
        if run.count > 0 { runs.prepend(run) }
        return first
    }

    /// Puts a run back at the front (the caller took only part of it).
    mutating func pushFront(_ run: Run) {
        runs.prepend(run)
    }

    private mutating func closeOpenRun() {
        if let run = open {
            runs.append(run)
            open = nil
        }
    }
}
