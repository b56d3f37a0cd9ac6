import TCPEngine

/// The congestion controllers the benchmark can compare, by command-line name.
enum CongestionChoice: String, CaseIterable, Codable {
    case newReno = "newreno"
    case cubic

    /// Applies the choice to an engine configuration; nil if this engine build lacks it.
    func apply(to configuration: inout TCPConfiguration) -> Bool {
        switch self {
        case .newReno: return true  // the engine's only controller until CUBIC lands
        case .cubic: return false
        }
    }
}
