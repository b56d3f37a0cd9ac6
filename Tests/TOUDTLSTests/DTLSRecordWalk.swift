import NIOCore
import TOUWire

/// The DTLS records of a datagram, found by walking their headers, for tests that look at what
/// crossed a link.
extension ByteBuffer {
    /// Each record's header and the index its header starts at, up to the first that is cut short.
    var dtlsRecords: [(at: Int, header: DTLSRecordHeader)] {
        var records: [(at: Int, header: DTLSRecordHeader)] = []
        var index = readerIndex
        while let header = DTLSRecordHeader.peek(in: self, at: index) {
            records.append((index, header))
            index += DTLSRecordHeader.encodedLength + header.length
        }
        return records
    }

    /// An epoch-1 handshake record: the sender's Finished, the first message it encrypts.
    var carriesEpoch1Handshake: Bool {
        dtlsRecords.contains { $0.header.contentType == DTLSRecordHeader.handshake && $0.header.epoch == 1 }
    }

    /// The first record is application data (in these tests, a TCP segment).
    var startsWithApplicationData: Bool {
        getInteger(at: readerIndex, as: UInt8.self) == DTLSRecordHeader.applicationData
    }
}
