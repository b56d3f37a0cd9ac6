import TCPEngine

/// The congestion controllers the benchmark can compare, by command-line name.
enum CongestionChoice: String, CaseIterable, Codable {
    case newReno = "newreno"
    case cubic

    /// Applies the choice to an engine configuration; false if this engine build lacks it.
    func apply(to configuration: inout TCPConfiguration) -> Bool {
        switch self {
        case .newReno: configuration.congestionControl = .newReno
        case .cubic: configuration.congestionControl = .cubic
        }
        return true
    }
}
