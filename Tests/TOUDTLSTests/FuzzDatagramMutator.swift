/// Seeded mutations of real captured datagrams: bit flips (anywhere, in the GUE header, in the
/// DTLS record header), truncations, extensions, splices of two datagrams, rewritten record
/// lengths, repeated payloads and zeroed runs, one to three stacked per datagram.
struct FuzzDatagramMutator {
    enum Mutation: CaseIterable {
        case flipBits, flipHeaderBits, flipRecordHeaderBits, truncate, extend, splice, swapHeader,
             rewriteRecordLength, repeatPayload, zeroRun
    }

    var random: SeededRandom
    let corpus: [[UInt8]]

    init(seed: UInt64, corpus: [[UInt8]]) {
        random = SeededRandom(seed: seed)
        self.corpus = corpus.filter { !$0.isEmpty }
    }

    mutating func next() -> [UInt8] {
        guard !corpus.isEmpty else { return random.bytes(random.below(64)) }
        var datagram = corpus[random.below(corpus.count)]
        for _ in 0..<(1 + random.below(3)) {
            let mutations = Mutation.allCases
            datagram = apply(mutations[random.below(mutations.count)], to: datagram)
        }
        return datagram
    }

    private mutating func flip(_ datagram: inout [UInt8], in range: Range<Int>) {
        guard !range.isEmpty else { return }
        for _ in 0..<(1 + random.below(8)) {
            let index = range.lowerBound + random.below(range.count)
            datagram[index] ^= UInt8(1) << UInt8(random.below(8))
        }
    }

    private func gueLength(_ datagram: [UInt8]) -> Int {
        CapturedDatagram.headerLength(datagram) ?? min(datagram.count, 4)
    }

    mutating func apply(_ mutation: Mutation, to original: [UInt8]) -> [UInt8] {
        var datagram = original
        switch mutation {
        case .flipBits:
            flip(&datagram, in: 0..<datagram.count)
        case .flipHeaderBits:
            flip(&datagram, in: 0..<min(datagram.count, 24))
        case .flipRecordHeaderBits:
            let start = gueLength(datagram)
            flip(&datagram, in: start..<min(datagram.count, start + 13))
        case .truncate:
            datagram = Array(datagram.prefix(random.below(datagram.count)))
        case .extend:
            datagram += random.bytes(1 + random.below(300))
        case .splice:
            let other = corpus[random.below(corpus.count)]
            datagram = Array(datagram.prefix(random.below(datagram.count + 1)))
                + other.suffix(random.below(other.count + 1))
        case .swapHeader:
            // One datagram's GUE header on another's records: real SIDs, wrong records.
            let other = corpus[random.below(corpus.count)]
            datagram = Array(datagram.prefix(gueLength(datagram))) + other.dropFirst(gueLength(other))
        case .rewriteRecordLength:
            let at = gueLength(datagram) + 11
            if datagram.count >= at + 2 {
                let lengths = [0, 1, 16, 23, 24, 0xFFFF, random.below(0x10000)]
                let length = lengths[random.below(lengths.count)]
                datagram[at] = UInt8(length >> 8 & 0xFF)
                datagram[at + 1] = UInt8(length & 0xFF)
            }
        case .repeatPayload:
            datagram += datagram.dropFirst(gueLength(datagram))
        case .zeroRun:
            if !datagram.isEmpty {
                let start = random.below(datagram.count)
                let end = min(datagram.count, start + 1 + random.below(32))
                for index in start..<end { datagram[index] = 0 }
            }
        }
        return datagram
    }
}
