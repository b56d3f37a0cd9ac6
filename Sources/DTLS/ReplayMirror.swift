/// Which epoch-1+ application-data sequence numbers were delivered: the anti-replay window of the
/// records `RecordLayer` opens (all of them, early ones included), with the semantics of OpenSSL's
/// 64-record window. It tells a replay from a too-old record, and whether a delivered record was
/// the newest so far.
struct ReplayMirror {
    private(set) var highest: UInt64 = 0
    private var bitmap: UInt64 = 0   // bit i set: highest - i was delivered
    private var epoch: UInt16 = 0
    private var any = false

    enum Verdict { case tooOld, replay, unseen }

    func classify(epoch: UInt16, sequence: UInt64) -> Verdict {
        guard any, epoch == self.epoch else { return .unseen }
        if sequence > highest { return .unseen }
        let behind = highest - sequence
        if behind >= 64 { return .tooOld }
        return bitmap & (1 << behind) != 0 ? .replay : .unseen
    }

    /// Records a delivered record; returns true if it is the newest seen in its epoch.
    mutating func markDelivered(epoch: UInt16, sequence: UInt64) -> Bool {
        if !any || epoch > self.epoch {
            self.epoch = epoch
            highest = sequence
            bitmap = 1
            any = true
            return true
        }
        guard epoch == self.epoch else { return false }
        if sequence > highest {
            let shift = sequence - highest
            bitmap = shift >= 64 ? 1 : (bitmap << shift) | 1
            highest = sequence
            return true
        }
        let behind = highest - sequence
        if behind < 64 { bitmap |= 1 << behind }
        return false
    }
}
