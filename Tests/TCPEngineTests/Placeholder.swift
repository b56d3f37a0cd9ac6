import Testing

@Test func placeholder_TCPEngineTests() {}
