import Testing

@Test func placeholder_TOUWireTests() {}
