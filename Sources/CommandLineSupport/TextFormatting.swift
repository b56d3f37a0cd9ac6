/// Numbers and JSON as the tools print them, without Foundation: a tool that links Foundation
/// loads its ICU data at start-up, a few milliseconds of every short connection.
public enum TextFormatting {
    /// `value` with `places` decimals (rounded half away from zero): fixed(3.14159, 2) == "3.14".
    public static func fixed(_ value: Double, places: Int) -> String {
        guard value.isFinite, abs(value) < 1e15 else { return "\(value)" }
        var scale = 1
        for _ in 0..<places { scale *= 10 }
        let scaled = Int((abs(value) * Double(scale)).rounded())
        let sign = value < 0 && scaled != 0 ? "-" : ""
        guard places > 0 else { return sign + String(scaled) }
        let fraction = String(scaled % scale)
        return sign + String(scaled / scale) + "." + String(repeating: "0", count: places - fraction.count) + fraction
    }
}

/// A JSON document: objects keep no order of their own and are written with sorted keys.
public indirect enum JSONDocument: Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case object([String: JSONDocument])

    /// Optional values become null.
    public static func optional(_ value: Int?) -> JSONDocument { value.map { .int($0) } ?? .null }
    public static func optional(_ value: String?) -> JSONDocument { value.map { .string($0) } ?? .null }

    /// Two-space indentation, one member per line, keys sorted.
    public func pretty(indent: String = "") -> String {
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .int(let value): return String(value)
        case .double(let value): return value.isFinite ? "\(value)" : "null"
        case .string(let value): return Self.quote(value)
        case .object(let members):
            guard !members.isEmpty else { return "{}" }
            let inner = indent + "  "
            let lines = members.sorted { $0.key < $1.key }.map { key, value in
                inner + Self.quote(key) + " : " + value.pretty(indent: inner)
            }
            return "{\n" + lines.joined(separator: ",\n") + "\n" + indent + "}"
        }
    }

    /// `text` as a JSON string literal.
    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
