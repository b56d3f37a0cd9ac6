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

    private struct Entry {
        var material: Material
        /// How the trust roots, chain and key looked when read (nil if one could not be examined).
        var stamps: [PEMStamp]?
        var context: DTLSContext
    }

    private let last = NIOLockedValueBox<Entry?>(nil)

    /// The context, if the material's files still look as they did when it was read and the
    /// pins are the same (copies of a configuration share this cache).
    func context(for stamps: [PEMStamp], pins: [String]) -> DTLSContext? {
        last.withLockedValue { entry in
            guard let entry, entry.stamps == stamps, entry.material.pins == pins else { return nil }
            return entry.context
        }
    }

    /// The context built from the same material (a file touched but not changed), remembering
    /// how its files look now.
    func context(for material: Material, stamps: [PEMStamp]?) -> DTLSContext? {
        last.withLockedValue { entry in
            guard entry?.material == material else { return nil }
            entry?.stamps = stamps
            return entry?.context
        }
    }

    func store(_ context: DTLSContext, for material: Material, stamps: [PEMStamp]?) {
        last.withLockedValue { $0 = Entry(material: material, stamps: stamps, context: context) }
    }
}
