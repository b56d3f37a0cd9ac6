import Testing

@Test func placeholder_DTLSTests() {}
