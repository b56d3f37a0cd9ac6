#if os(Linux)
import Foundation
import Glibc

/// A network namespace made for one test with `ip netns add`, holding a TUN device whose far
/// side is the kernel's TCP stack. Deleted (with its device and sockets' routes) by `remove()`.
final class LinuxInteropNamespace {
    let name: String
    let deviceName = "tou0"
    /// The TUN file descriptor: packets written here enter the namespace's kernel stack.
    private(set) var tun: Int32 = -1

    static let kernelIPv4: [UInt8] = [10, 77, 0, 1]
    static let engineIPv4: [UInt8] = [10, 77, 0, 2]
    static let kernelIPv6: [UInt8] = [0xFD, 0x77] + [UInt8](repeating: 0, count: 13) + [1]
    static let engineIPv6: [UInt8] = [0xFD, 0x77] + [UInt8](repeating: 0, count: 13) + [2]

    struct SetupError: Error, CustomStringConvertible { let description: String }

    /// Why these tests cannot run here, or nil if they can.
    static let unavailableReason: String? = {
        if getuid() != 0 { return "Linux interop tests need root (to create a network namespace and a TUN device)" }
        if access("/dev/net/tun", R_OK | W_OK) != 0 { return "Linux interop tests need /dev/net/tun" }
        if ipTool == nil { return "Linux interop tests need the ip tool (Debian package iproute2)" }
        if setnsFunction == nil { return "setns() is not available" }
        return nil
    }()

    static let ipTool: String? = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Glibc declares setns only under _GNU_SOURCE, which Swift's Glibc module does not define.
    private static let setnsFunction: (@convention(c) (Int32, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
    }()
    private static let cloneNewNet: Int32 = 0x4000_0000

    init(tag: String) throws {
        name = "toudtls-\(tag)-\(getpid())"
        _ = try? Self.ip(["netns", "del", name])  // a leftover of a crashed run
        try Self.ip(["netns", "add", name])
        do {
            try inside { tun = try Self.openTUN(named: deviceName) }
            try Self.ip(["-n", name, "link", "set", "lo", "up"])
            try Self.ip(["-n", name, "link", "set", deviceName, "mtu", "1500", "up"])
            try Self.ip(["-n", name, "addr", "add", "10.77.0.1/24", "dev", deviceName])
            try Self.ip(["-n", name, "addr", "add", "fd77::1/64", "dev", deviceName, "nodad"])
        } catch {
            remove()
            throw error
        }
    }

    func remove() {
        if tun >= 0 {
            close(tun)
            tun = -1
        }
        _ = try? Self.ip(["netns", "del", name])
    }

    deinit { remove() }

    /// Runs `body` on this thread inside the namespace, then returns the thread to where it was.
    /// Sockets and devices opened in `body` stay in the namespace. No suspension happens in
    /// between, so no other task can run on this thread meanwhile.
    func inside<T>(_ body: () throws -> T) throws -> T {
        guard let setns = Self.setnsFunction else { throw SetupError(description: "no setns") }
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw SetupError(description: "open own netns: errno \(errno)") }
        defer { close(original) }
        let target = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw SetupError(description: "open /run/netns/\(name): errno \(errno)") }
        defer { close(target) }
        guard setns(target, Self.cloneNewNet) == 0 else { throw SetupError(description: "setns: errno \(errno)") }
        defer {
            // Failing to return would leave this worker thread in the test's namespace.
            if setns(original, Self.cloneNewNet) != 0 { fatalError("could not leave network namespace \(name)") }
        }
        return try body()
    }

    private static func openTUN(named name: String) throws -> Int32 {
        let fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SetupError(description: "open /dev/net/tun: errno \(errno)") }
        // struct ifreq: 16 bytes of name, then ifr_flags (IFF_TUN 0x0001 | IFF_NO_PI 0x1000).
        var request = [UInt8](repeating: 0, count: 40)
        for (index, byte) in name.utf8.prefix(15).enumerated() { request[index] = byte }
        let flags: Int16 = 0x0001 | 0x1000
        withUnsafeBytes(of: flags) { request[16] = $0[0]; request[17] = $0[1] }
        let tunsetiff: UInt = 0x4004_54CA
        let result = request.withUnsafeMutableBytes { ioctl(fd, tunsetiff, $0.baseAddress!) }
        guard result == 0 else {
            close(fd)
            throw SetupError(description: "TUNSETIFF: errno \(errno)")
        }
        return fd
    }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> String {
        guard let tool = ipTool else { throw SetupError(description: "no ip tool") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw SetupError(description: "ip \(arguments.joined(separator: " ")): \(text)")
        }
        return text
    }
}
#endif
