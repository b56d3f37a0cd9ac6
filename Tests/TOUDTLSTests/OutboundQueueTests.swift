import NIOCore
import Testing
@testable import TOUDTLS

@Suite("Outbound runs for UDP GSO")
struct OutboundQueueTests {
    static func append(_ queue: inout OutboundQueue, size: Int, fill: UInt8) {
        queue.appendDatagram(size: size) { $0.writeRepeatingByte(fill, count: size) }
    }

    static func drain(_ queue: inout OutboundQueue) -> [OutboundQueue.Run] {
        var runs: [OutboundQueue.Run] = []
        while let run = queue.pollRun() { runs.append(run) }
        return runs
    }

    @Test("equal datagrams form one run whose slices are the datagrams, in order")
    func equalRun() {
        var queue = OutboundQueue()
        for fill in 0..<5 { Self.append(&queue, size: 1200, fill: UInt8(fill)) }
        let runs = Self.drain(&queue)
        #expect(runs.count == 1)
        #expect(runs[0].count == 5 && runs[0].segmentSize == 1200)
        #expect(runs[0].slices.enumerated().allSatisfy { index, slice in
            slice.readableBytes == 1200 && slice.readableBytesView.allSatisfy { $0 == UInt8(index) }
        })
    }

    @Test("a shorter datagram ends its run; a longer one starts a new run")
    func shortEndsRun() {
        var queue = OutboundQueue()
        for (index, size) in [1200, 1200, 300, 1200, 1400, 1400].enumerated() {
            Self.append(&queue, size: size, fill: UInt8(index))
        }
        let runs = Self.drain(&queue)
        #expect(runs.map(\.count) == [3, 1, 2])
        #expect(runs.map(\.datagrams.readableBytes) == [2700, 1200, 2800])
        #expect(runs.map(\.segmentSize) == [1200, 1200, 1400])
    }

    @Test("a ready-made datagram keeps its place between runs")
    func readyMadeKeepsOrder() {
        var queue = OutboundQueue()
        Self.append(&queue, size: 1000, fill: 1)
        Self.append(&queue, size: 1000, fill: 2)
        var alert = ByteBufferAllocator().buffer(capacity: 40)
        alert.writeRepeatingByte(9, count: 40)
        queue.append(alert)
        Self.append(&queue, size: 1000, fill: 3)
        let runs = Self.drain(&queue)
        #expect(runs.map(\.count) == [2, 1, 1])
        #expect(runs[1].datagrams == alert)
    }

    @Test("a write that appends nothing adds no datagram")
    func failedWrite() {
        var queue = OutboundQueue()
        Self.append(&queue, size: 1000, fill: 1)
        queue.appendDatagram(size: 1000) { _ in }
        Self.append(&queue, size: 1000, fill: 2)
        let runs = Self.drain(&queue)
        #expect(runs.map(\.count) == [2])
    }

    @Test("a datagram longer than predicted leaves on its own after the run")
    func longerThanPredicted() {
        var queue = OutboundQueue()
        Self.append(&queue, size: 1000, fill: 1)
        Self.append(&queue, size: 1000, fill: 2)
        queue.appendDatagram(size: 1000) { $0.writeRepeatingByte(3, count: 1100) }
        let runs = Self.drain(&queue)
        #expect(runs.map(\.count) == [2, 1])
        #expect(runs[1].datagrams.readableBytes == 1100)
    }

    @Test("runs stay under 64 KiB and 64 segments, and completed runs are counted")
    func limits() {
        var queue = OutboundQueue()
        for index in 0..<100 { Self.append(&queue, size: 1472, fill: UInt8(index)) }
        #expect(queue.completedRuns == 2)
        let big = Self.drain(&queue)
        #expect(big.allSatisfy { $0.datagrams.readableBytes <= OutboundQueue.maximumBytes })
        #expect(big.map(\.count).reduce(0, +) == 100)
        for index in 0..<130 { Self.append(&queue, size: 100, fill: UInt8(index)) }
        #expect(Self.drain(&queue).map(\.count) == [64, 64, 2])
    }

    @Test("datagrams taken one at a time come out in order, the rest of a run staying one run")
    func oneDatagramAtATime() {
        var queue = OutboundQueue()
        for (index, size) in [1200, 1200, 300, 900].enumerated() { Self.append(&queue, size: size, fill: UInt8(index)) }
        let first = queue.pollDatagram()
        #expect(first?.readableBytes == 1200 && first?.readableBytesView.allSatisfy { $0 == 0 } == true)
        #expect(queue.completedRuns == 1)  // the rest of the first run (the 900-byte one is still open)
        var rest: [ByteBuffer] = []
        while let datagram = queue.pollDatagram() { rest.append(datagram) }
        #expect(rest.map(\.readableBytes) == [1200, 300, 900])
        #expect(rest.enumerated().allSatisfy { index, datagram in
            datagram.readableBytesView.allSatisfy { $0 == UInt8(index + 1) }
        })
        #expect(queue.pollRun() == nil)
    }
}
