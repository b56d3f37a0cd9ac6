/// Big-endian stores into raw memory the caller has already sized: a header written through it
/// costs one ByteBuffer call rather than one (with its bounds, uniqueness and exclusivity checks)
/// per field.
struct RawWriter {
    private let base: UnsafeMutableRawPointer
    private var offset = 0

    init(_ base: UnsafeMutableRawPointer) {
        self.base = base
    }

    mutating func put<T: FixedWidthInteger>(_ value: T) {
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }
}
