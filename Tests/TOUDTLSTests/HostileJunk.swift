import Foundation

/// Builders of hostile datagrams for a secure-mode TOU listener.
struct HostileJunk {
    enum Kind: Int, CaseIterable, CustomStringConvertible {
        case randomBytes, truncated, oversized, forgedGUE, badRecords, badRecordsToSession,
             forgedClientHello, randomDestination, replayedData, replayedHandshake

        var description: String {
            ["random bytes", "truncated", "oversized", "forged GUE", "bad DTLS records",
             "bad DTLS records to the live SID", "forged ClientHello", "random D", "replayed data",
             "replayed handshake"][rawValue]
        }
    }

    var random: SeededRandom
    /// A real initial ClientHello datagram (GUE + DTLS) to forge others from.
    let clientHelloTemplate: [UInt8]?
    /// The live session's listener-side SID, if known.
    let sessionSID: UInt64?
    private var forgedGUEIndex = 0

    init(seed: UInt64, clientHelloTemplate: [UInt8]?, sessionSID: UInt64?) {
        random = SeededRandom(seed: seed)
        self.clientHelloTemplate = clientHelloTemplate
        self.sessionSID = sessionSID
    }

    static func word(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64($0))) }
    }

    /// A well-formed secure-mode GUE header with the given session IDs.
    static func secureHeader(source: UInt64?, destination: UInt64?) -> [UInt8] {
        let hlen = 1 + (source == nil ? 0 : 2) + (destination == nil ? 0 : 2)
        let flags: UInt16 = 0x0200 | (source == nil ? 0 : 0x0100) | (destination == nil ? 0 : 0x0080)
        var header: [UInt8] = [UInt8(hlen), 59, UInt8(flags >> 8), UInt8(flags & 0xFF), 1, 6, 0, 0]
        if let source { header += word(source) }
        if let destination { header += word(destination) }
        return header
    }

    mutating func randomSID() -> UInt64 { random.next() | 1 }

    mutating func randomBytes() -> [UInt8] {
        random.bytes(random.below(1500) + 1)
    }

    /// A prefix of a plausible header, or a header whose Hlen claims more than the datagram holds.
    mutating func truncated() -> [UInt8] {
        let full = Self.secureHeader(source: randomSID(), destination: random.chance(50) ? randomSID() : nil)
        if random.chance(50) {
            return Array(full.prefix(random.below(full.count - 1) + 1))
        }
        var header = full
        header[0] = UInt8(min(31, Int(header[0]) + 1 + random.below(8)))
        return header
    }

    /// Larger than the listener's receive slot (2 KiB at path MTU 1500), with a header and one record that claims it all.
    mutating func oversized() -> [UInt8] {
        let size = 2049 + random.below(16_000)
        var datagram = Self.secureHeader(source: random.chance(50) ? randomSID() : nil,
                                         destination: random.chance(70) ? (sessionSID ?? randomSID()) : randomSID())
        let recordLength = size - datagram.count - 13
        datagram += [23, 0xFE, 0xFD, 0, 1] + random.bytes(6) + [UInt8(recordLength >> 8 & 0xFF), UInt8(recordLength & 0xFF)]
        datagram += random.bytes(size - datagram.count)
        return datagram
    }

    /// Cycles through every variant, C, Hlen, T/S/D subset, an unknown flag or not, and a set of protos.
    static let protos: [UInt8] = [0, 6, 17, 59, 255]
    static let forgedGUECombinations = 4 * 2 * 32 * 8 * 2 * protos.count

    mutating func forgedGUE() -> [UInt8] {
        var index = forgedGUEIndex
        forgedGUEIndex = (forgedGUEIndex + 1) % Self.forgedGUECombinations
        let proto = Self.protos[index % Self.protos.count]; index /= Self.protos.count
        let unknownFlag = index % 2 == 1; index /= 2
        let tsd = index % 8; index /= 8
        let hlen = index % 32; index /= 32
        let control = index % 2; index /= 2
        let variant = index % 4
        var flags = UInt16(tsd & 4 != 0 ? 0x0200 : 0) | UInt16(tsd & 2 != 0 ? 0x0100 : 0) | UInt16(tsd & 1 != 0 ? 0x0080 : 0)
        if unknownFlag {
            let others: [UInt16] = [0x8000, 0x4000, 0x1000, 0x0400, 0x0040, 0x0001]
            flags |= others[random.below(others.count)]
        }
        var datagram: [UInt8] = [UInt8(variant << 6 | control << 5 | hlen), proto, UInt8(flags >> 8), UInt8(flags & 0xFF)]
        // Fields: a correct transform half the time so later rules are reached, then SIDs or noise.
        var fields = random.chance(50) ? [1, 6, 0, 0] + random.bytes(4 * hlen) : random.bytes(4 * hlen + 4)
        fields = Array(fields.prefix(4 * hlen))
        datagram += fields
        datagram += random.bytes(random.below(200))
        return datagram
    }

    /// A DTLS record header with a bad length, epoch or content type, and a random body.
    mutating func badRecord() -> [UInt8] {
        let types: [UInt8] = [0, 19, 20, 21, 22, 23, 24, 255, UInt8(truncatingIfNeeded: random.next())]
        let epochs: [UInt16] = [0, 1, 2, 0xFFFF, UInt16(truncatingIfNeeded: random.next())]
        let type = types[random.below(types.count)]
        let epoch = epochs[random.below(epochs.count)]
        let body = random.bytes(random.below(120))
        let lengths = [0, body.count, body.count + 1 + random.below(1000), max(0, body.count - 1), 0xFFFF]
        let length = lengths[random.below(lengths.count)]
        let version: [UInt8] = random.chance(80) ? [0xFE, 0xFD] : random.bytes(2)
        return [type] + version + [UInt8(epoch >> 8), UInt8(epoch & 0xFF)] + random.bytes(6)
            + [UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
    }

    mutating func badRecords(toSession: Bool) -> [UInt8] {
        let destination: UInt64? = toSession ? sessionSID : (random.chance(50) ? randomSID() : nil)
        let source: UInt64? = toSession ? nil : randomSID()
        var datagram = Self.secureHeader(source: source, destination: destination)
        for _ in 0..<(1 + random.below(3)) { datagram += badRecord() }
        return datagram
    }

    /// `template` (a real initial ClientHello) with a fresh S, optionally a D, a fresh random and
    /// a random cookie of 0...64 bytes, every length field kept consistent, without padding (so a
    /// listener asks it for a cookie).
    static func forgeClientHello(_ template: [UInt8], random: inout SeededRandom, source: UInt64?,
                                 destination: UInt64?) -> [UInt8]? {
        guard let gueLength = CapturedDatagram.headerLength(template), template.count >= gueLength + 13 else { return nil }
        // The record alone: a cookieless ClientHello arrives padded, and forgeries are not.
        let recordEnd = gueLength + 13 + (Int(template[gueLength + 11]) << 8 | Int(template[gueLength + 12]))
        guard template.count >= recordEnd else { return nil }
        let record = Array(template[gueLength..<recordEnd])
        // record header 13, handshake header 12, version 2, random 32, session id
        let bodyStart = 13 + 12
        guard record.count > bodyStart + 35 else { return nil }
        let sessionIDLength = Int(record[bodyStart + 34])
        let cookieAt = bodyStart + 35 + sessionIDLength
        guard record.count > cookieAt else { return nil }
        let oldCookieLength = Int(record[cookieAt])
        let restAt = cookieAt + 1 + oldCookieLength
        guard record.count >= restAt else { return nil }
        let cookie = random.bytes(random.below(65))
        var body = Array(record[bodyStart..<(bodyStart + 2)]) + random.bytes(32)
        body += record[(bodyStart + 34)..<cookieAt]
        body += [UInt8(cookie.count)] + cookie + record[restAt...]
        let length = body.count
        var handshake = [record[13]] + [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
        handshake += [0, 0, 0, 0, 0] + [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
        let recordLength = handshake.count + body.count
        var header = Array(record[0..<11])
        header += [UInt8(recordLength >> 8 & 0xFF), UInt8(recordLength & 0xFF)]
        return secureHeader(source: source, destination: destination) + header + handshake + body
    }

    mutating func forgedClientHello() -> [UInt8] {
        guard let template = clientHelloTemplate else { return randomBytes() }
        // Mostly S alone or S with a random D (answered with HelloVerifyRequests); some D alone
        // or neither (dropped before DTLS sees them).
        let roll = random.below(10)
        let source: UInt64? = roll < 2 ? nil : randomSID()
        let destination: UInt64? = roll == 1 || (roll >= 2 && roll < 6) ? randomSID() : nil
        return Self.forgeClientHello(template, random: &random, source: source,
                                     destination: destination) ?? randomBytes()
    }

    /// Secure-mode GUE with a random D (and sometimes a random S) and random records.
    mutating func randomDestination() -> [UInt8] {
        Self.secureHeader(source: random.chance(20) ? randomSID() : nil, destination: randomSID())
            + [23, 0xFE, 0xFD, 0, 1] + random.bytes(8) + random.bytes(random.below(1400))
    }

    mutating func make(_ kind: Kind) -> [UInt8] {
        switch kind {
        case .randomBytes: return randomBytes()
        case .truncated: return truncated()
        case .oversized: return oversized()
        case .forgedGUE: return forgedGUE()
        case .badRecords: return badRecords(toSession: false)
        case .badRecordsToSession: return badRecords(toSession: sessionSID != nil)
        case .forgedClientHello: return forgedClientHello()
        case .randomDestination: return randomDestination()
        case .replayedData, .replayedHandshake: return randomBytes()
        }
    }
}
