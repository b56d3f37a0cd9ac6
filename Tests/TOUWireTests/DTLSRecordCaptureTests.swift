import NIOCore
import Testing
import TOUWire

/// A real DTLS 1.2 exchange between `openssl s_client -dtls1_2` and `openssl s_server -dtls1_2
/// -listen` (OpenSSL 3.0.19, ECDHE-ECDSA-AES128-GCM-SHA256, one line of data each way, then
/// close_notify), captured datagram by datagram through a UDP relay. A peer no one here wrote.
private let capture: [(fromClient: Bool, hex: String)] = [
    (true,
        "16feff000000000000000000c0010000b400000000000000b4fefd949a5b87126bbaa10e2cb996b59bacd80dc2df074e" +
        "b6bb54e3799fe78050c2a000000038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0" +
        "140039c009c0130033009d009c003d003c0035002f00ff01000052000b000403000102000a000c000a001d0017001e00" +
        "190018002300000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401050106" +
        "01030303010302040205020602"),
    (false,
        "16feff00000000000000000023030000170000000000000017feff1453897e52e0215e95ad58be727b0c4ee77b71a6cc"),
    (true,
        "16feff000000000000000100d4010000c800010000000000c8fefd949a5b87126bbaa10e2cb996b59bacd80dc2df074e" +
        "b6bb54e3799fe78050c2a0001453897e52e0215e95ad58be727b0c4ee77b71a6cc0038c02cc030009fcca9cca8ccaac0" +
        "2bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff0100005200" +
        "0b000403000102000a000c000a001d0017001e00190018002300000016000000170000000d002a002804030503060308" +
        "0708080809080a080b080408050806040105010601030303010302040205020602"),
    (false,
        "16fefd000000000000000100490200003d000100000000003dfefdd3d84e46e066a277fb04b20ee6ba5e8ecfeea44e3d" +
        "7de691a367e8dbae0b680d00c02b000015ff01000100000b000403000102002300000017000016fefd00000000000000" +
        "0201930b00018700020000000001870001840001813082017d30820123a003020102021463acb817a0fa7663e9cd9769" +
        "b27c393c806d688e300a06082a8648ce3d04030230143112301006035504030c096c6f63616c686f7374301e170d3236" +
        "313132353136303933385a170d3236313132363136303933385a30143112301006035504030c096c6f63616c686f7374" +
        "3059301306072a8648ce3d020106082a8648ce3d03010703420004325e29bc85c52d41f3ed9b7679190c674e3d8a134b" +
        "5cd385de86cbb38136eba9f4403d328c18ffc72a0a9402afa6a47a7f6f1d68e90bbea0971e7f6c2fe4fbd2a353305130" +
        "1d0603551d0e04160414f28c5ea30389ba1f93638c85a16696b2f2ea09c8301f0603551d23041830168014f28c5ea303" +
        "89ba1f93638c85a16696b2f2ea09c8300f0603551d130101ff040530030101ff300a06082a8648ce3d04030203480030" +
        "45022100b5e89e38e26bca3a52a0f0bdfbceb87a1a7b12e57a21e60b49d2b14767109c5402203ec864a1f06859c112a1" +
        "45a8b801faa17c62644587973f83bc6a2edab12901e116fefd0000000000000003007a0c00006e000300000000006e03" +
        "001d2083c0e4aa94ac926f362c8c0219faf1dcd49331f890da97fa0f4e242efa571420040300463044022042ecbfa907" +
        "9d27a7335ef3cdc3d40087c20a526be22be99d46d7ffc233771aad02201d7799262285804caecc2c2bd61d96916b457c" +
        "4ebf9e4ef72cf102d370e3dc8b16fefd0000000000000004000c0e0000000004000000000000"),
    (true,
        "16fefd0000000000000002002d10000021000200000000002120fb1db11398a318024aa24ef19cfaa03bb07a4ed00220" +
        "2dcffe537dd00ead001e14fefd000000000000000300010116fefd00010000000000000030ea63c0dfd2f32f36f72b5e" +
        "832da68edb50f9d9f4a434aefa9389972a56b0af9ad04ffc37a2df4db2ce1d194cd8f9ef02"),
    (false,
        "16fefd000000000000000500c2040000b600050000000000b600001c2000b017b5ca7db32652b00f269ddd09d983701a" +
        "c4c671b7e6803aa57a2c40e401e1f3a4e881858acc38ab3289c3776557170f60063e650552bb63d0a1e24711d4149de6" +
        "77ef56296ffc886443339ff14c2576c5bc7481e12646b2d567a0d0df8e217e57d8fe4e106fae31886bd7da7980c24503" +
        "be750266e33c1208f9e6a978c09fcde66d979649156a879ee5f1e484d2a86bf167ca44868be6d4d276767083568a188b" +
        "15699dfb1602a4ce5eff43280cada914fefd000000000000000600010116fefd000100000000000000303b6ced1a5ef9" +
        "321d762957310212631c4a60fccdc0487635f76628a8a53899f98d3e146d22f69c9c4cbfc37a0e999f60"),
    (true,
        "17fefd0001000000000001002aea63c0dfd2f32f375c2b9b495017ea8116de3c2b5ee5250459608db2c116bc45468e47" +
        "7ea42a101a5b69"),
    (false,
        "17fefd0001000000000001002a3b6ced1a5ef9321e0f65f633329ca1ca6c3f2da2b27e075219b2ed9dc257d767b4dec4" +
        "70634c832bbf41"),
    (false,
        "15fefd0001000000000002001a3b6ced1a5ef9321f9c94635b097d7b79b1ef25cce69f4fc5d995"),
    (true,
        "15fefd0001000000000002001aea63c0dfd2f32f386542fca1408c89e01c84305116a199ae67f3"),
]

private func datagram(_ hex: String) -> ByteBuffer {
    var bytes: [UInt8] = []
    var high: UInt8?
    for char in hex.utf8 {
        let nibble = char <= 0x39 ? char - 0x30 : char - 0x61 + 10
        if let h = high { bytes.append(h << 4 | nibble); high = nil } else { high = nibble }
    }
    return ByteBuffer(bytes: bytes)
}

@Suite struct DTLSRecordCaptureTests {
    private struct Expected {
        var records: Int
        var s: Bool
        var clientHello: Bool
        var data: DTLSRecordPosition?
    }

    // ClientHello, HelloVerifyRequest, ClientHello+cookie, server flight (4 records), client
    // CKE+CCS+Finished, NewSessionTicket+CCS+Finished, data each way, close_notify each way.
    private let expected: [Expected] = [
        Expected(records: 1, s: true, clientHello: true),
        Expected(records: 1, s: true, clientHello: false),
        Expected(records: 1, s: true, clientHello: true),
        Expected(records: 4, s: true, clientHello: false),
        Expected(records: 3, s: true, clientHello: false),
        Expected(records: 3, s: true, clientHello: false),
        Expected(records: 1, s: false, clientHello: false, data: DTLSRecordPosition(epoch: 1, sequenceNumber: 1)),
        Expected(records: 1, s: false, clientHello: false, data: DTLSRecordPosition(epoch: 1, sequenceNumber: 1)),
        Expected(records: 1, s: false, clientHello: false),
        Expected(records: 1, s: false, clientHello: false),
    ]

    @Test func everyRealDatagramIsSummarisedAsTheWireFormatSays() throws {
        try #require(capture.count == expected.count)
        for (index, (entry, want)) in zip(capture, expected).enumerated() {
            let summary = try #require(DTLSDatagramSummary.scan(datagram(entry.hex)), "datagram \(index)")
            #expect(summary.recordCount == want.records, "datagram \(index)")
            #expect(summary.carriesHandshakeOrEpoch0 == want.s, "datagram \(index)")
            #expect(summary.isClientHello == want.clientHello, "datagram \(index)")
            #expect(summary.lastApplicationData == want.data, "datagram \(index)")
        }
    }

    /// Only a ClientHello datagram may be padded (with zeros where a record would start).
    @Test func realDatagramsCutShortOrPaddedAreRejectedUnlessAPaddedClientHello() throws {
        for (entry, want) in zip(capture, expected) {
            let whole = datagram(entry.hex)
            var short = whole
            short.moveWriterIndex(to: whole.writerIndex - 1)
            #expect(DTLSDatagramSummary.scan(short) == nil)
            var padded = whole
            padded.writeRepeatingByte(0, count: max(1, DTLSDatagramSummary.paddedClientHelloSize - whole.readableBytes))
            if want.clientHello {
                let summary = try #require(DTLSDatagramSummary.scan(padded))
                #expect(summary.paddingLength == padded.readableBytes - whole.readableBytes)
                #expect(summary.recordCount == want.records)
            } else {
                #expect(DTLSDatagramSummary.scan(padded) == nil)
            }
            var junk = whole
            junk.writeInteger(UInt8(7))
            #expect(DTLSDatagramSummary.scan(junk) == nil)
        }
    }

    /// The first ClientHello carries an empty cookie, the one after the HelloVerifyRequest a full one.
    @Test func theClientHelloCookieIsSeen() throws {
        let clientHellos = zip(capture, expected).filter { $0.1.clientHello }.map { datagram($0.0.hex) }
        try #require(clientHellos.count == 2)
        #expect(DTLSDatagramSummary.scan(clientHellos[0])?.clientHelloHasCookie == false)
        #expect(DTLSDatagramSummary.scan(clientHellos[1])?.clientHelloHasCookie == true)
        #expect(DTLSDatagramSummary.scan(datagram(capture[1].hex))?.clientHelloHasCookie == nil)
    }

    @Test func realExchangeFramedInGUEAndBack() throws {
        let clientSID: UInt64 = 0x0A0A_0A0A_0A0A_0A0A
        let serverSID: UInt64 = 0x5050_5050_5050_5050
        var clientKnowsServer = false
        for (index, entry) in capture.enumerated() {
            let payload = datagram(entry.hex)
            let summary = try #require(DTLSDatagramSummary.scan(payload))
            let header = entry.fromClient
                ? GUEHeader.secure(carrying: summary, localSID: clientSID,
                                   remoteSID: clientKnowsServer ? serverSID : nil)
                : GUEHeader.secure(carrying: summary, localSID: serverSID, remoteSID: clientSID)
            if !entry.fromClient { clientKnowsServer = true }

            var wire = ByteBuffer()
            header.write(into: &wire)
            wire.writeImmutableBuffer(payload)
            let parsed = try GUEHeader.parse(from: &wire, mode: .secure)
            #expect(parsed == header)
            #expect(wire == payload, "datagram \(index): payload intact after the header")
            // S exactly on the handshake; D from the first answer on.
            #expect((parsed.sourceSID != nil) == (index < 6), "datagram \(index)")
            #expect((parsed.destinationSID != nil) == (index > 0), "datagram \(index)")
        }
    }
}
