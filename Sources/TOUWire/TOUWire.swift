// TOUWire module.
