// An echo server over TOU: every byte a client sends comes back, until the client's FIN.
//
//   swift run EchoServer [PORT]         (default 6080; the test certificates in certs/)
import Foundation
import NIOCore
import TOUDTLS

let port = CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 6080
let configuration = TOUConfiguration.server(certificateChain: .pemFile("certs/server.pem"),
                                            privateKey: .pemFile("certs/server.key"))
let listener = try await TOUListener.bind(host: "127.0.0.1", port: port, configuration: configuration)
// Unbuffered, so a script reading a pipe sees the port at once.
FileHandle.standardOutput.write(Data("echoing on \(listener.localAddress.ipAndPort)\n".utf8))

// Each connection served on the event loop of the worker that accepted it: no thread switch
// between accepting, reading and writing.
await listener.serve { connection in
    do {
        for try await chunk in connection.inbound {
            try await connection.write(chunk)   // suspends while the client reads slowly
        }
        try await connection.close()            // our FIN, once everything is acknowledged
    } catch {
        print("\(connection.remoteAddress.ipAndPort): \(error)")
    }
}
