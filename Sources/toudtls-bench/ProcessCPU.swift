import Foundation

/// User and system CPU time of a process, in microseconds.
struct CPUTime: Sendable {
    var userMicroseconds: Double
    var systemMicroseconds: Double

    var totalMicroseconds: Double { userMicroseconds + systemMicroseconds }

    static func - (later: CPUTime, earlier: CPUTime) -> CPUTime {
        CPUTime(userMicroseconds: later.userMicroseconds - earlier.userMicroseconds,
                systemMicroseconds: later.systemMicroseconds - earlier.systemMicroseconds)
    }

    /// This process, all threads (getrusage RUSAGE_SELF).
    static func ofThisProcess() -> CPUTime {
        var usage = rusage()
        #if os(Linux)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func micros(_ time: timeval) -> Double { Double(time.tv_sec) * 1e6 + Double(time.tv_usec) }
        return CPUTime(userMicroseconds: micros(usage.ru_utime), systemMicroseconds: micros(usage.ru_stime))
    }

    /// Another process on this machine, all threads, from /proc/PID/stat (utime and stime, fields 14
    /// and 15, in clock ticks); nil where there is no such file.
    static func ofProcess(_ pid: Int32) -> CPUTime? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let nameEnd = text.lastIndex(of: ")") else { return nil }
        // The command name may hold spaces and parentheses: count fields after its closing one.
        let fields = text[text.index(after: nameEnd)...].split(separator: " ")
        // fields[0] is field 3 (state), so utime (14) and stime (15) are fields[11] and fields[12].
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard ticks > 0 else { return nil }
        return CPUTime(userMicroseconds: user / ticks * 1e6, systemMicroseconds: system / ticks * 1e6)
    }
}
