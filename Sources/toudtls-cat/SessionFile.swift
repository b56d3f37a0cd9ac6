import FoundationEssentials
import TOUDTLS

#if canImport(Glibc)
import Glibc
#endif

/// `--session-file`: a saved DTLS session between runs. A missing file is normal (the first run);
/// an unreadable, corrupt or foreign one is reported and ignored, never fatal.
enum SessionFile {
    static func load(_ path: String, serverName: String, warn: (String) -> Void) -> TOUSavedSession? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            warn("cannot read the session file \(path); making a full handshake")
            return nil
        }
        let saved: TOUSavedSession
        do {
            saved = try TOUSavedSession(serialized: [UInt8](data))
        } catch {
            warn("ignoring the session file \(path): \(Self.reason(error))")
            return nil
        }
        guard saved.serverName == serverName else {
            warn("ignoring the session file \(path): it is for \"\(saved.serverName)\", not \"\(serverName)\"")
            return nil
        }
        guard saved.expires > Date() else {
            warn("ignoring the session file \(path): the session expired at \(saved.expires)")
            return nil
        }
        return saved
    }

    /// Written to a temporary file created with mode 0600 and renamed over `path`, so the secret
    /// is never readable by others, and a reader never sees half a file. The temporary file is
    /// always a new one (O_EXCL): whatever already has its name, a link someone planted included,
    /// is removed, never written through.
    static func save(_ session: TOUSavedSession, to path: String, warn: (String) -> Void) {
        let temporary = path + ".tmp-\(getpid())"
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC
        var fd = open(temporary, flags, 0o600)
        if fd < 0, errno == EEXIST {
            unlink(temporary)
            fd = open(temporary, flags, 0o600)
        }
        guard fd >= 0 else {
            warn("cannot save the session to \(path): \(String(cString: strerror(errno)))")
            return
        }
        let bytes = session.serialized()
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let closed = close(fd)
        guard written == bytes.count, closed == 0, rename(temporary, path) == 0 else {
            warn("cannot save the session to \(path): \(String(cString: strerror(errno)))")
            unlink(temporary)
            return
        }
    }

    private static func reason(_ error: Error) -> String {
        if case .invalidConfiguration(let what) = error as? TOUError { return what }
        return "\(error)"
    }
}
