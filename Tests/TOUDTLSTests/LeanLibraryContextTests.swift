import CTOUOpenSSL
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// When client contexts may run in the shim's lean OpenSSL library context (tou_libctx.c): only
/// over a plain default provider, so that a configuration loading FIPS or other providers is obeyed.
@Suite struct LeanLibraryContextTests {
    static func allowed(_ names: [String]) -> Bool {
        var pointers = names.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) {
                tou_lean_libctx_allowed($0.baseAddress, names.count) == 1
            }
        }
    }

    @Test func onlyOverOpenSSLsOwnDefaultProvider() {
        #expect(Self.allowed(["default"]))
        #expect(Self.allowed(["base", "default"]))
        #expect(!Self.allowed(["fips", "base"]))
        #expect(!Self.allowed(["default", "fips"]))
        #expect(!Self.allowed(["default", "legacy"]))
        #expect(!Self.allowed(["default", "pkcs11"]))
        #expect(!Self.allowed([]))
    }
}
