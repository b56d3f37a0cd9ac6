// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "toudtls",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "TOUDTLS", targets: ["TOUDTLS"]),
        .library(name: "TOUNIO", targets: ["TOUNIO"]),
        .executable(name: "toudtls-cat", targets: ["toudtls-cat"]),
        .executable(name: "toudtls-bench", targets: ["toudtls-bench"]),
        .executable(name: "toudtls-netsim", targets: ["toudtls-netsim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    ],
    targets: [
        // The system OpenSSL (Debian: libssl-dev), found through pkg-config.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The only code that touches OpenSSL: contexts, sessions, a datagram BIO, cookies, HMAC.
        .target(
            name: "CTOUOpenSSL",
            dependencies: ["COpenSSL"]
        ),
        // Value types and codecs: GUE/TOU header, TCP header and options, checksums.
        .target(
            name: "TOUWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // Sans-IO TCP: segments and time in, segments and deadlines out.
        .target(
            name: "TCPEngine",
            dependencies: [
                "TOUWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // A deterministic network simulator for TCPEngine: links with loss, reordering, delay,
        // bottleneck queues and a virtual clock. Used by tests and toudtls-netsim.
        .target(
            name: "TCPSimulator",
            dependencies: [
                "TCPEngine", "TOUWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // Sans-IO DTLS 1.2 over the shim: datagrams in, datagrams and plaintext out.
        .target(
            name: "DTLS",
            dependencies: [
                "CTOUOpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Linux socket calls Swift cannot reach directly (mmsghdr, cmsg, epoll_pwait2).
        .target(name: "CDatagramIO"),
        // Datagram I/O of our own: an epoll event loop that is a NIO EventLoop, and a UDP socket
        // on it with recvmmsg/sendmmsg, GSO/GRO and raw peer addresses.
        .target(
            name: "DatagramIO",
            dependencies: [
                "CDatagramIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The library users import: sessions, endpoint (SwiftNIO UDP), public async API.
        .target(
            name: "TOUDTLS",
            dependencies: [
                "TOUWire", "TCPEngine", "DTLS", "CTOUOpenSSL", "DatagramIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // TOU connections as SwiftNIO Channels, with bootstraps shaped like NIO's own.
        .target(
            name: "TOUNIO",
            dependencies: [
                "TOUDTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // What the tools share: --help, --version, usage errors and their exit codes.
        .target(
            name: "CommandLineSupport",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "toudtls-cat",
            dependencies: [
                "TOUDTLS", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "toudtls-bench",
            dependencies: [
                "TOUDTLS", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Goodput of the TCP engine over simulated links, beside the loss-based predictions.
        .executableTarget(
            name: "toudtls-netsim",
            dependencies: [
                "TCPSimulator", "TCPEngine", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Examples a user can copy (built by `swift build`; run from the repository root for certs/).
        .executableTarget(
            name: "EchoServer",
            dependencies: ["TOUDTLS", .product(name: "NIOCore", package: "swift-nio")],
            path: "Examples/EchoServer"
        ),
        .executableTarget(
            name: "EchoClient",
            dependencies: ["TOUDTLS", .product(name: "NIOCore", package: "swift-nio")],
            path: "Examples/EchoClient"
        ),
        .executableTarget(
            name: "PortForward",
            dependencies: [
                "TOUDTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Examples/PortForward"
        ),
        .executableTarget(
            name: "HTTPServer",
            dependencies: [
                "TOUDTLS", "TOUNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Examples/HTTPServer"
        ),
        .executableTarget(
            name: "HTTPClient",
            dependencies: [
                "TOUDTLS", "TOUNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Examples/HTTPClient"
        ),
        .testTarget(name: "TOUWireTests", dependencies: ["TOUWire"]),
        .testTarget(
            name: "TCPEngineTests",
            dependencies: ["TCPEngine", "TOUWire", "TCPSimulator", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "DTLSTests", dependencies: ["DTLS"]),
        .testTarget(
            name: "DatagramIOTests",
            dependencies: ["DatagramIO", "CDatagramIO", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "TOUNIOTests",
            dependencies: [
                "TOUNIO", "TOUDTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "TOUDTLSTests",
            dependencies: [
                "TOUDTLS", "TOUWire", "TCPEngine", "DTLS", "DatagramIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // tunnel_peers.py: the Python TCP services and clients TunnelTests runs.
        .testTarget(name: "CLITests", dependencies: [], exclude: ["tunnel_peers.py"]),
    ],
    swiftLanguageModes: [.v6]
)
