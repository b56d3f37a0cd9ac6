// An HTTP/1.1 file server over TOU, with SwiftNIO's own HTTP handlers (NIOHTTP1) on TOU channels:
// GET /some/file answers with FOLDER/some/file.
//
//   swift run HTTPServer [PORT] [FOLDER]     (default 6443 and the current directory; the test
//                                             certificates in certs/)
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import TOUDTLS
import TOUNIO

let arguments = Array(CommandLine.arguments.dropFirst())
let port = arguments.first.flatMap(Int.init) ?? 6443
let folder = URL(fileURLWithPath: arguments.count > 1 ? arguments[1] : ".").standardizedFileURL.path

let configuration = TOUConfiguration.server(certificateChain: .pemFile("certs/server.pem"),
                                            privateKey: .pemFile("certs/server.key"))
// As with NIO's ServerBootstrap: each accepted connection gets the HTTP server handlers and is
// wrapped for async use; its requests are served in a task of their own.
let server = try await TOUServerBootstrap(group: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    .bind(host: "127.0.0.1", port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
        }
    }
// Unbuffered, so a script reading a pipe sees the port at once.
FileHandle.standardOutput.write(Data("serving \(folder) on \(server.channel.localAddress!.ipAndPort)\n".utf8))

try await withThrowingDiscardingTaskGroup { group in
    try await server.executeThenClose { connections in
        for try await connection in connections {
            group.addTask { await serve(connection) }
        }
    }
}

/// Answers the requests of one connection, in order, until the client closes it (or asks to).
func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
    do {
        try await connection.executeThenClose { inbound, outbound in
            for try await part in inbound {
                guard case .head(let request) = part else { continue }
                try await respond(to: request, outbound)
                if !request.isKeepAlive { break }
            }
        }
    } catch {
        print("\(connection.channel.remoteAddress?.ipAndPort ?? "?"): \(error)")
    }
}

func respond(to request: HTTPRequestHead,
             _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
    var headers = HTTPHeaders()
    headers.add(name: "Connection", value: request.isKeepAlive ? "keep-alive" : "close")
    guard request.method == .GET, let path = file(for: request.uri),
          let file = FileHandle(forReadingAtPath: path),
          let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int else {
        let body = ByteBuffer(string: "not found: \(request.uri)\n")
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        try await outbound.write(.head(HTTPResponseHead(version: request.version, status: .notFound, headers: headers)))
        try await outbound.write(.body(.byteBuffer(body)))
        try await outbound.write(.end(nil))
        return
    }
    defer { try? file.close() }
    headers.add(name: "Content-Length", value: "\(size)")
    try await outbound.write(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers)))
    // Each write returns once the channel has taken it; a slow client holds the reading back.
    while let chunk = try file.read(upToCount: 64 * 1024), !chunk.isEmpty {
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: chunk))))
    }
    try await outbound.write(.end(nil))
}

/// The regular file under `folder` that `uri` names, or nil (no such file, or outside the folder).
func file(for uri: String) -> String? {
    let rawPath = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    guard let path = String(rawPath).removingPercentEncoding,
          !path.split(separator: "/").contains("..") else { return nil }
    let resolved = URL(fileURLWithPath: folder + "/" + path).standardizedFileURL.path
    var isDirectory: ObjCBool = false
    guard resolved.hasPrefix(folder + "/"),
          FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory), !isDirectory.boolValue else {
        return nil
    }
    return resolved
}
