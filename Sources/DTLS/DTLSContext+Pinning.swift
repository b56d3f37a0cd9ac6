import CTOUOpenSSL

/// SHA-256 public-key pins (as in HPKP and curl's `--pinnedpubkey`): the hash of a certificate's
/// DER SubjectPublicKeyInfo, written `sha256:BASE64`.
extension DTLSContext {
    /// The pin of the first certificate in `ofCertificatePEM`: SHA-256 of its DER
    /// SubjectPublicKeyInfo (32 bytes).
    public static func publicKeySHA256(ofCertificatePEM pem: [UInt8]) throws(DTLSError) -> [UInt8] {
        var hash = [UInt8](repeating: 0, count: 32)
        var error = [CChar](repeating: 0, count: 512)
        let ok = pem.withUnsafeBufferPointer { input in
            hash.withUnsafeMutableBufferPointer { out in
                tou_public_key_sha256(input.baseAddress, input.count, out.baseAddress, &error, error.count)
            }
        }
        guard ok == 1 else { throw .invalidConfiguration(cString(error)) }
        return hash
    }

    /// Parses `sha256:BASE64` (or curl's `sha256//BASE64`) into the 32-byte hash.
    public static func publicKeyPin(parsing text: String) throws(DTLSError) -> [UInt8] {
        let body: Substring
        if text.hasPrefix("sha256:") {
            body = text.dropFirst("sha256:".count)
        } else if text.hasPrefix("sha256//") {
            body = text.dropFirst("sha256//".count)
        } else {
            throw .invalidConfiguration("public-key pin \"\(text)\" must look like sha256:BASE64")
        }
        guard let hash = Base64.decode(body), hash.count == 32 else {
            throw .invalidConfiguration(
                "public-key pin \"\(text)\" is not the base64 of a 32-byte SHA-256 hash")
        }
        return hash
    }

    /// `sha256:BASE64`, the form `publicKeyPin(parsing:)` reads and error messages show.
    public static func publicKeyPinString(_ hash: [UInt8]) -> String {
        "sha256:" + Base64.encode(hash)
    }
}

/// Standard base64 (RFC 4648, with padding), enough for pins; strict on input.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = bytes[index]
            let b1 = index + 1 < bytes.count ? bytes[index + 1] : 0
            let b2 = index + 2 < bytes.count ? bytes[index + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < bytes.count ? alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil for anything that is not canonical padded base64.
    static func decode(_ text: Substring) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard !chars.isEmpty, chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var index = 0
        while index < chars.count {
            let isLast = index + 4 == chars.count
            var values: [UInt8] = []
            var padding = 0
            for char in chars[index..<(index + 4)] {
                if char == UInt8(ascii: "=") {
                    padding += 1
                    values.append(0)
                } else {
                    // Data after padding, or padding outside the last quartet, is malformed.
                    guard padding == 0, let value = sextet(char) else { return nil }
                    values.append(value)
                }
            }
            guard padding == 0 || (isLast && padding <= 2) else { return nil }
            out.append(values[0] << 2 | values[1] >> 4)
            if padding < 2 { out.append(values[1] << 4 | values[2] >> 2) }
            if padding < 1 { out.append(values[2] << 6 | values[3]) }
            index += 4
        }
        return out
    }

    private static func sextet(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return char - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return char - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return char - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
