// Sends a line to an echo server over TOU and prints what comes back.
//
//   swift run EchoClient [HOST] [PORT] [TEXT]     (default 127.0.0.1 6080 "hello")
import NIOCore
import TOUDTLS

let arguments = Array(CommandLine.arguments.dropFirst())
let host = arguments.count > 0 ? arguments[0] : "127.0.0.1"
let port = arguments.count > 1 ? Int(arguments[1]) ?? 6080 : 6080
let text = arguments.count > 2 ? arguments[2] : "hello"

// The test CA; the server's certificate names "localhost".
let configuration = TOUConfiguration.client(trustRoots: .pemFile("certs/ca.pem"), serverName: "localhost")
do {
    // The request rides on the TCP SYN, so the answer arrives two round trips after connect begins.
    let connection = try await TOUConnection.connect(host: host, port: port, configuration: configuration,
                                                     initialData: ByteBuffer(string: text + "\n"))
    try await connection.finishWriting()
    for try await chunk in connection.inbound {
        print(String(buffer: chunk), terminator: "")
    }
    print("(\(connection.cipherSuite ?? "plain"), \(connection.isResumed ? "resumed" : "full handshake"))")
    try await connection.close()
} catch let error as TOUError {
    print("echo failed: \(error)")
}
