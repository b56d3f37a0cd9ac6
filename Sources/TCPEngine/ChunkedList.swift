/// A list kept in order by its user, stored as a list of short arrays ("chunks"): inserting or
/// removing in the middle shifts the elements of one chunk (and, when a chunk splits or merges,
/// the chunk references) instead of every element after it. Elements are found by binary search
/// with a predicate that is false for a prefix of the list and true for the rest.
///
/// Positions are invalidated by any mutation; look them up again afterwards.
struct ChunkedList<Element> {
    struct Position: Equatable {
        var chunk: Int
        var offset: Int
    }

    /// Every chunk holds between 1 and `maximumChunk` elements.
    private var chunks: [[Element]] = []
    private(set) var count = 0
    /// Elements and chunk references shifted or copied: the part of the list's work that could
    /// grow with its length, counted so tests can bound it without timing anything.
    private(set) var steps = 0

    private static var maximumChunk: Int { 64 }
    /// A chunk this small is merged into a neighbour when the two fit in one.
    private static var minimumChunk: Int { 16 }

    var isEmpty: Bool { count == 0 }
    var endPosition: Position { Position(chunk: chunks.count, offset: 0) }
    var last: Element? { chunks.last?.last }

    subscript(position: Position) -> Element {
        get { chunks[position.chunk][position.offset] }
        set { chunks[position.chunk][position.offset] = newValue }
    }

    /// The first position whose element satisfies `predicate`, or `endPosition`; `predicate`
    /// must be false for a prefix of the list and true for the rest.
    func firstPosition(where predicate: (Element) -> Bool) -> Position {
        var low = 0
        var high = chunks.count
        while low < high {
            let middle = (low + high) / 2
            let chunk = chunks[middle]
            if predicate(chunk[chunk.count - 1]) { high = middle } else { low = middle + 1 }
        }
        guard low < chunks.count else { return endPosition }
        let chunk = chunks[low]
        var first = 0
        var last = chunk.count
        while first < last {
            let middle = (first + last) / 2
            if predicate(chunk[middle]) { last = middle } else { first = middle + 1 }
        }
        return Position(chunk: low, offset: first)
    }

    func position(after position: Position) -> Position {
        if position.offset + 1 < chunks[position.chunk].count {
            return Position(chunk: position.chunk, offset: position.offset + 1)
        }
        return Position(chunk: position.chunk + 1, offset: 0)
    }

    func position(before position: Position) -> Position? {
        if position.offset > 0 { return Position(chunk: position.chunk, offset: position.offset - 1) }
        guard position.chunk > 0 else { return nil }
        return Position(chunk: position.chunk - 1, offset: chunks[position.chunk - 1].count - 1)
    }

    /// Inserts before `position` (`endPosition` appends).
    mutating func insert(_ element: Element, at position: Position) {
        count += 1
        guard !chunks.isEmpty else {
            chunks.append([element])
            steps += 1
            return
        }
        var position = position
        if position.chunk == chunks.count {
            position = Position(chunk: chunks.count - 1, offset: chunks[chunks.count - 1].count)
        }
        chunks[position.chunk].insert(element, at: position.offset)
        steps += chunks[position.chunk].count - position.offset
        let size = chunks[position.chunk].count
        guard size > Self.maximumChunk else { return }
        let half = size / 2
        let upper = Array(chunks[position.chunk][half...])
        chunks[position.chunk].removeSubrange(half...)
        chunks.insert(upper, at: position.chunk + 1)
        steps += size - half + chunks.count - position.chunk
    }

    @discardableResult
    mutating func remove(at position: Position) -> Element {
        count -= 1
        let element = chunks[position.chunk].remove(at: position.offset)
        steps += chunks[position.chunk].count - position.offset + 1
        let size = chunks[position.chunk].count
        if size == 0 {
            chunks.remove(at: position.chunk)
            steps += chunks.count - position.chunk
        } else if size < Self.minimumChunk {
            mergeIntoNeighbour(position.chunk)
        }
        return element
    }

    mutating func removeLast() -> Element? {
        guard let chunk = chunks.indices.last else { return nil }
        return remove(at: Position(chunk: chunk, offset: chunks[chunk].count - 1))
    }

    /// Removes and returns the elements before `position`, whole chunks at a time.
    mutating func removePrefix(upTo position: Position) -> [Element] {
        guard position.chunk > 0 || position.offset > 0 else { return [] }
        var removed: [Element] = []
        let wholeChunks = min(position.chunk, chunks.count)
        for chunk in chunks[..<wholeChunks] { removed.append(contentsOf: chunk) }
        chunks.removeFirst(wholeChunks)
        steps += removed.count + chunks.count
        if position.offset > 0, !chunks.isEmpty {
            removed.append(contentsOf: chunks[0][..<position.offset])
            chunks[0].removeFirst(position.offset)
            steps += position.offset + chunks[0].count
            if chunks[0].isEmpty {
                chunks.removeFirst()
            } else if chunks[0].count < Self.minimumChunk {
                mergeIntoNeighbour(0)
            }
        }
        count -= removed.count
        return removed
    }

    mutating func removeAll() {
        chunks.removeAll()
        count = 0
    }

    /// Keeps chunks from thinning out, so the list of chunks stays short.
    private mutating func mergeIntoNeighbour(_ index: Int) {
        if index + 1 < chunks.count, chunks[index].count + chunks[index + 1].count <= Self.maximumChunk {
            let next = chunks.remove(at: index + 1)
            chunks[index].append(contentsOf: next)
            steps += next.count + chunks.count - index
        } else if index > 0, chunks[index - 1].count + chunks[index].count <= Self.maximumChunk {
            let current = chunks.remove(at: index)
            chunks[index - 1].append(contentsOf: current)
            steps += current.count + chunks.count - index
        }
    }
}
