import Testing

@Test func placeholder_TOUDTLSTests() {}
