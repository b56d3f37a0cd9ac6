// Downloads a URL's path from HTTPServer (or any HTTP/1.1 server over TOU) to stdout, with
// SwiftNIO's own HTTP handlers (NIOHTTP1) on a TOU channel.
//
//   swift run HTTPClient URL      (e.g. tou://127.0.0.1:6443/README.md; the port defaults to 6443,
//                                  the scheme is not looked at; the test CA in certs/)
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import TOUDTLS
import TOUNIO

guard CommandLine.arguments.count == 2, let url = URL(string: CommandLine.arguments[1]), let host = url.host else {
    FileHandle.standardError.write(Data("usage: HTTPClient URL   (e.g. tou://127.0.0.1:6443/README.md)\n".utf8))
    exit(2)
}
let port = url.port ?? 6443
let path = url.path.isEmpty ? "/" : url.path + (url.query.map { "?" + $0 } ?? "")

// The test CA; the server's certificate names "localhost".
let configuration = TOUConfiguration.client(trustRoots: .pemFile("certs/ca.pem"), serverName: "localhost")
do {
    // As with NIO's ClientBootstrap: HTTP client handlers on the channel, wrapped for async use.
    let client = try await TOUClientBootstrap(group: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
        .connect(host: host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
            }
        }
    let status = try await client.executeThenClose { inbound, outbound in
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Connection", value: "close")
        try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)))
        try await outbound.write(.end(nil))
        var status = HTTPResponseStatus.internalServerError
        for try await part in inbound {
            switch part {
            case .head(let head):
                status = head.status
            case .body(let chunk):
                // The body as it arrives: reading no faster than stdout takes it holds the server back.
                if status == .ok {
                    FileHandle.standardOutput.write(Data(chunk.readableBytesView))
                } else {
                    FileHandle.standardError.write(Data(chunk.readableBytesView))
                }
            case .end:
                return status
            }
        }
        return status
    }
    if status != .ok {
        FileHandle.standardError.write(Data("HTTPClient: \(status.code) \(status.reasonPhrase)\n".utf8))
        exit(1)
    }
} catch {
    FileHandle.standardError.write(Data("HTTPClient: \(error)\n".utf8))
    exit(1)
}
