import ArgumentParser
import Foundation
import TCPEngine

/// The congestion controllers the benchmark can compare, by command-line name.
enum CongestionChoice: String, CaseIterable, Codable {
    case newReno = "newreno"
    case cubic

    /// A comma-separated list of names, as the commands take it.
    static func list(_ text: String) throws -> [CongestionChoice] {
        try text.split(separator: ",").map { name -> CongestionChoice in
            guard let choice = CongestionChoice(rawValue: name.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw ValidationError("unknown congestion controller \"\(name)\" (newreno, cubic)")
            }
            return choice
        }
    }

    /// Applies the choice to an engine configuration; false if this engine build lacks it.
    func apply(to configuration: inout TCPConfiguration) -> Bool {
        switch self {
        case .newReno: configuration.congestionControl = .newReno
        case .cubic: configuration.congestionControl = .cubic
        }
        return true
    }
}
