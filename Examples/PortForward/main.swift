// A minimal tunnel client: local TCP connections carried over TOU, one TOU connection each, to a
// server that relays them on (`toudtls-cat -l -k --tcp-connect HOST:PORT ...`). toudtls-cat's own
// `--tcp-listen` does the same with resets, half-close, logging and limits; this shows the shape.
//
//   swift run PortForward LOCALPORT HOST PORT
import NIOCore
import NIOPosix
import TOUDTLS

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count == 3, let localPort = Int(arguments[0]), let remotePort = Int(arguments[2]) else {
    print("usage: PortForward LOCALPORT HOST PORT")
    exit(2)
}
let host = arguments[1]
let configuration = TOUConfiguration.client(trustRoots: .pemFile("certs/ca.pem"), serverName: "localhost")

let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
    .childChannelOption(.allowRemoteHalfClosure, value: true)
    .bind(host: "127.0.0.1", port: localPort) { channel in
        channel.eventLoop.makeCompletedFuture {
            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
        }
    }
print("forwarding 127.0.0.1:\(localPort) to \(host) \(remotePort) over TOU")

try await server.executeThenClose { inbound in
    for try await tcp in inbound {
        Task {
            do {
                let tou = try await TOUConnection.connect(host: host, port: remotePort, configuration: configuration)
                try await tcp.executeThenClose { tcpIn, tcpOut in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            // Each write waits for room in TOU's send buffer: backpressure on the TCP side.
                            for try await chunk in tcpIn { try await tou.write(chunk) }
                            try await tou.finishWriting()
                        }
                        group.addTask {
                            for try await chunk in tou.inbound { try await tcpOut.write(chunk) }
                            tcpOut.finish()
                        }
                        try await group.waitForAll()
                    }
                }
                try await tou.close()
            } catch {
                print("connection failed: \(error)")
                try? await tcp.channel.close()
            }
        }
    }
}
