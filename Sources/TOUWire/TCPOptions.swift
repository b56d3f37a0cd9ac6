import NIOCore

/// One SACK block (RFC 2018): the peer holds `[left, right)`.
public struct TCPSACKBlock: Sendable, Hashable {
    public var left: UInt32
    public var right: UInt32
    public init(left: UInt32, right: UInt32) {
        self.left = left
        self.right = right
    }
}

/// The RFC 7323 timestamps option.
public struct TCPTimestamps: Sendable, Hashable {
    public var value: UInt32
    public var echoReply: UInt32
    public init(value: UInt32, echoReply: UInt32) {
        self.value = value
        self.echoReply = echoReply
    }
}

/// The TCP options this project understands. Unknown options are skipped on parse and never sent.
public struct TCPOptions: Sendable, Hashable {
    public var maximumSegmentSize: UInt16?
    /// The shift count as sent; RFC 7323 caps its use at 14, which is the engine's business.
    public var windowScale: UInt8?
    public var sackPermitted: Bool
    /// At most four blocks fit; `write` drops any that would not fit in the 40 option bytes.
    public var sackBlocks: [TCPSACKBlock]
    public var timestamps: TCPTimestamps?

    public init(
        maximumSegmentSize: UInt16? = nil,
        windowScale: UInt8? = nil,
        sackPermitted: Bool = false,
        sackBlocks: [TCPSACKBlock] = [],
        timestamps: TCPTimestamps? = nil
    ) {
        self.maximumSegmentSize = maximumSegmentSize
        self.windowScale = windowScale
        self.sackPermitted = sackPermitted
        self.sackBlocks = sackBlocks
        self.timestamps = timestamps
    }

    public var isEmpty: Bool {
        maximumSegmentSize == nil && windowScale == nil && !sackPermitted && sackBlocks.isEmpty
            && timestamps == nil
    }

    static let maximumLength = 40

    /// How many SACK blocks `write` emits: as many as fit after the other options.
    var sackBlocksWritten: Int {
        guard !sackBlocks.isEmpty else { return 0 }
        let room = Self.maximumLength - fixedLength - 4  // NOP, NOP, kind, length
        return max(0, min(sackBlocks.count, room / 8))
    }

    private var fixedLength: Int {
        (maximumSegmentSize == nil ? 0 : 4) + (windowScale == nil ? 0 : 4) + (sackPermitted ? 4 : 0)
            + (timestamps == nil ? 0 : 12)
    }

    /// Bytes the options occupy on the wire, a multiple of four (NOP padding keeps fields aligned).
    public var encodedLength: Int {
        let blocks = sackBlocksWritten
        return fixedLength + (blocks == 0 ? 0 : 4 + 8 * blocks)
    }

    /// Writes the options, each padded with leading NOPs to a 32-bit boundary, through a writer
    /// with `encodedLength` bytes of room.
    func write(to writer: inout RawWriter) {
        if let mss = maximumSegmentSize {
            writer.put(UInt16(0x0204))
            writer.put(mss)
        }
        if let shift = windowScale {
            writer.put(UInt32(0x0103_0300) | UInt32(shift))
        }
        if sackPermitted {
            writer.put(UInt32(0x0101_0402))
        }
        if let ts = timestamps {
            writer.put(UInt32(0x0101_080A))
            writer.put(ts.value)
            writer.put(ts.echoReply)
        }
        let blocks = sackBlocksWritten
        if blocks > 0 {
            writer.put(UInt32(0x0101_0500) | UInt32(2 + 8 * blocks))
            for block in sackBlocks.prefix(blocks) {
                writer.put(block.left)
                writer.put(block.right)
            }
        }
    }

    /// Parses the option bytes of a header. Unknown kinds are skipped by their length; a length
    /// that is too short, runs past the end, or does not match a known kind's size is rejected.
    static func parse(_ bytes: UnsafeRawBufferPointer) throws(TCPParseError) -> TCPOptions {
        var options = TCPOptions()
        var index = 0
        let count = bytes.count
        func readUInt16(_ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }
        func readUInt32(_ at: Int) -> UInt32 {
            UInt32(readUInt16(at)) << 16 | UInt32(readUInt16(at + 2))
        }
        while index < count {
            let kind = bytes[index]
            if kind == 0 { break }  // end of option list
            if kind == 1 {
                index += 1
                continue
            }
            guard index + 1 < count else { throw .malformedOption(kind: kind) }
            let length = Int(bytes[index + 1])
            guard length >= 2, index + length <= count else { throw .malformedOption(kind: kind) }
            switch kind {
            case 2:
                guard length == 4 else { throw .malformedOption(kind: kind) }
                options.maximumSegmentSize = readUInt16(index + 2)
            case 3:
                guard length == 3 else { throw .malformedOption(kind: kind) }
                options.windowScale = bytes[index + 2]
            case 4:
                guard length == 2 else { throw .malformedOption(kind: kind) }
                options.sackPermitted = true
            case 5:
                guard (length - 2) % 8 == 0, length > 2 else { throw .malformedOption(kind: kind) }
                var at = index + 2
                var blocks: [TCPSACKBlock] = []
                blocks.reserveCapacity((length - 2) / 8)
                while at < index + length {
                    blocks.append(TCPSACKBlock(left: readUInt32(at), right: readUInt32(at + 4)))
                    at += 8
                }
                options.sackBlocks = blocks
            case 8:
                guard length == 10 else { throw .malformedOption(kind: kind) }
                options.timestamps = TCPTimestamps(
                    value: readUInt32(index + 2), echoReply: readUInt32(index + 6))
            default:
                break
            }
            index += length
        }
        return options
    }
}
