import DTLS
import NIOConcurrencyHelpers

/// The last client DTLS context a configuration built, with the material it was built from. A
/// context is immutable and shared by connections; a new one is built when the material changes.
final class ClientContextCache: Sendable {
    struct Material: Hashable, Sendable {
        /// nil: the system trust store.
        var trustRoots: [UInt8]?
        var certificateChain: [UInt8]?
        var privateKey: [UInt8]?
        var pins: [String]
    }

    private let last = NIOLockedValueBox<(material: Material, context: DTLSContext)?>(nil)

    func context(for material: Material) -> DTLSContext? {
        last.withLockedValue { $0?.material == material ? $0?.context : nil }
    }

    func store(_ context: DTLSContext, for material: Material) {
        last.withLockedValue { $0 = (material, context) }
    }
}
