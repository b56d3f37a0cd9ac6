import NIOCore

/// The minimum of the samples seen within a window of time (Kathleen Nichols' algorithm, as
/// Linux's lib/minmax.c): the best, second and third candidates from successive parts of the
/// window, so an old minimum ages out without every sample being kept.
struct WindowedMinimum {
    private struct Sample {
        var at: NIODeadline
        var value: TimeAmount
    }

    let window: TimeAmount
    private var best: Sample?
    private var second: Sample?
    private var third: Sample?

    init(window: TimeAmount) { self.window = window }

    var value: TimeAmount? { best?.value }

    /// Forgets every sample (the path changed).
    mutating func reset() {
        best = nil
        second = nil
        third = nil
    }

    mutating func update(_ value: TimeAmount, at now: NIODeadline) {
        let sample = Sample(at: now, value: value)
        guard let best, let second, let third, value > best.value, now - third.at <= window else {
            // A new minimum, or nothing left in the window: start over from this sample.
            (self.best, self.second, self.third) = (sample, sample, sample)
            return
        }
        if value <= second.value {
            (self.second, self.third) = (sample, sample)
        } else if value <= third.value {
            self.third = sample
        }
        let age = now - best.at
        if age > window {
            // The best candidate has left the window: the next ones move up (maybe twice, as
            // the second may be out as well; the third was checked above).
            (self.best, self.second, self.third) = (self.second, self.third, sample)
            if let moved = self.best, now - moved.at > window {
                (self.best, self.second, self.third) = (self.second, self.third, sample)
            }
        } else if self.second?.at == best.at, age > .nanoseconds(window.nanoseconds / 4) {
            // A quarter of the window without a new minimum: a second choice from this quarter.
            (self.second, self.third) = (sample, sample)
        } else if self.third?.at == self.second?.at, age > .nanoseconds(window.nanoseconds / 2) {
            // Half the window: a third choice from the later half.
            self.third = sample
        }
    }
}
