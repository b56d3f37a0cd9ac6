/// Deadlines of an `IOLoop`, earliest first. Cancelling removes the action from `actions` and
/// leaves the heap entry behind: it is skipped when it comes up, which keeps cancel O(1) for the
/// TCP timers that are re-armed far more often than they fire.
struct TimerHeap<Action> {
    private struct Entry {
        var deadline: UInt64
        /// Ties run in the order they were scheduled.
        var id: UInt64
        func precedes(_ other: Entry) -> Bool {
            deadline != other.deadline ? deadline < other.deadline : id < other.id
        }
    }

    private var heap: [Entry] = []
    private var actions: [UInt64: Action] = [:]
    private var nextID: UInt64 = 1

    var isEmpty: Bool { actions.isEmpty }
    var count: Int { actions.count }

    /// IDs made here are below 2^63; callers off the loop make theirs above (see `IOLoop`).
    mutating func insert(deadline: UInt64, _ action: Action) -> UInt64 {
        let id = nextID
        nextID += 1
        insert(deadline: deadline, id: id, action)
        return id
    }

    mutating func insert(deadline: UInt64, id: UInt64, _ action: Action) {
        actions[id] = action
        heap.append(Entry(deadline: deadline, id: id))
        siftUp(heap.count - 1)
    }

    /// Removes the action of `id`, if it has not run yet.
    mutating func cancel(_ id: UInt64) -> Action? {
        let action = actions.removeValue(forKey: id)
        if actions.isEmpty { heap.removeAll(keepingCapacity: true) }
        return action
    }

    /// The earliest live deadline (dropping cancelled entries on the way).
    mutating func earliest() -> UInt64? {
        while let top = heap.first {
            if actions[top.id] != nil { return top.deadline }
            removeTop()
        }
        return nil
    }

    /// The next action due at or before `now`.
    mutating func popDue(now: UInt64) -> Action? {
        while let top = heap.first, top.deadline <= now {
            removeTop()
            if let action = actions.removeValue(forKey: top.id) { return action }
        }
        return nil
    }

    /// Every action left, in no particular order (shutdown).
    mutating func removeAll() -> [Action] {
        let all = Array(actions.values)
        actions.removeAll()
        heap.removeAll()
        return all
    }

    private mutating func removeTop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        siftDown(0)
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { return }
            var smallest = left
            if left + 1 < heap.count, heap[left + 1].precedes(heap[left]) { smallest = left + 1 }
            guard heap[smallest].precedes(heap[parent]) else { return }
            heap.swapAt(smallest, parent)
            parent = smallest
        }
    }
}
