/// Modular comparisons on 32-bit sequence numbers (RFC 9293 section 3.4).
extension UInt32 {
    @inlinable func seqLT(_ other: UInt32) -> Bool { Int32(bitPattern: self &- other) < 0 }
    @inlinable func seqLE(_ other: UInt32) -> Bool { Int32(bitPattern: self &- other) <= 0 }
    @inlinable func seqGT(_ other: UInt32) -> Bool { Int32(bitPattern: self &- other) > 0 }
    @inlinable func seqGE(_ other: UInt32) -> Bool { Int32(bitPattern: self &- other) >= 0 }
    /// Signed distance from `other` to `self`.
    @inlinable func seqDistance(from other: UInt32) -> Int { Int(Int32(bitPattern: self &- other)) }
    @inlinable func seqAdvanced(by count: Int) -> UInt32 { self &+ UInt32(truncatingIfNeeded: count) }
}
