// TCPEngine module.
