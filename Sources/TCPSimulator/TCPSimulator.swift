// Placeholder until the simulator lands.
import TCPEngine
