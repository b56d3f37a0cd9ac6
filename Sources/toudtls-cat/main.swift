import TOUDTLS
