// Placeholder until the simulator benchmark lands.
import TCPSimulator
print("{}")
