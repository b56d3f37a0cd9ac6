// TOUDTLS module.
import TCPEngine
